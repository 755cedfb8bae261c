"""evol-instruct, evol-complexity (WizardLM, arXiv 2304.12244; DEITA, arXiv 2312.15685) and
evol-quality (DEITA): rewrite a row's instruction (or response) `num_evolutions` times in
a row, each round with a mutation picked at random and fed the previous round's result.

A row's calls run in sequence (each needs the last one's answer); rows run concurrently.
Every call has its own step key (`evol0`, `evol1`, ..., `answer0`, ...), so a retried job
row replays what it already paid for, and each mutation is drawn from `ctx.rng(step)`.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

from pydantic import Field, field_validator

from llm_clients.base import Message

from .base import ParseError, RowContext, Task, TaskParams
from .parsing import after_last_prompt
from .rendering import render

PROMPT = "<PROMPT>"
RESPONSE = "<RESPONSE>"
_PLACEHOLDERS = re.compile(f"{PROMPT}|{RESPONSE}")

# The method sentence of each "rewrite" mutation (templates/evol-rewrite.jinja2).
REWRITE_METHODS = {
    "CONSTRAINTS": "Add one more constraint or requirement to the given prompt.",
    "DEEPENING": "If the given prompt asks about a particular issue, widen and deepen that inquiry.",
    "CONCRETIZING": "Replace general concepts in the given prompt with more specific ones.",
    "INCREASED_REASONING_STEPS": ("If the given prompt can be solved with a few simple steps of thinking, "
                                  "rewrite it to ask explicitly for reasoning in several steps."),
}
BREADTH = "BREADTH"
FRESH_START = "FRESH_START"

COMPLEXITY_MUTATIONS = tuple(REWRITE_METHODS)
INSTRUCT_MUTATIONS = (*COMPLEXITY_MUTATIONS, BREADTH)

# The method sentence of each evol-quality mutation (templates/evol-quality.jinja2).
QUALITY_METHODS = {
    "HELPFULNESS": "Make the response more helpful to the user.",
    "RELEVANCE": "Make the response more relevant to the prompt.",
    "DEEPENING": "Make the response treat the subject in more depth.",
    "CREATIVITY": "Make the response more creative.",
    "DETAILS": "Add more useful details to the response.",
}


# Built-in mutations are rendered once with placeholders, then filled by one regex pass
# per call: rendering a sandboxed template on every call costs as much as the HTTP call.
@lru_cache(maxsize=None)
def _mutation_text(name: str) -> str:
    if name == BREADTH:
        return render("evol-breadth", prompt=PROMPT)
    return render("evol-rewrite", method=REWRITE_METHODS[name], prompt=PROMPT)


@lru_cache(maxsize=None)
def _quality_text(name: str) -> str:
    return render("evol-quality", method=QUALITY_METHODS[name], prompt=PROMPT, response=RESPONSE)


def fill(template: str, prompt: str, response: str | None = None) -> str:
    """`<PROMPT>` (and, when a response is given, `<RESPONSE>`) replaced in one pass, so a
    value that holds a placeholder is not substituted again."""
    if response is None:
        return template.replace(PROMPT, prompt)
    values = {PROMPT: prompt, RESPONSE: response}
    return _PLACEHOLDERS.sub(lambda m: values[m.group()], template)


def mutate(name: str, prompt: str) -> str:
    """The built-in mutation `name` applied to `prompt`."""
    return fill(_mutation_text(name), prompt)


def user(content: str) -> list[Message]:
    return [{"role": "user", "content": content}]


def check_templates(value: dict[str, str] | None, placeholders: tuple[str, ...]) -> dict[str, str] | None:
    if value is None:
        return None
    if not value:
        raise ValueError("give at least one mutation template, or null for the built-in ones")
    for name, text in value.items():
        missing = [p for p in placeholders if p not in text]
        if missing:
            raise ValueError(f"mutation template {name!r} lacks the placeholder(s) {', '.join(missing)}")
    return value


class EvolParams(TaskParams):
    num_evolutions: int = Field(1, ge=1, le=20, description="Rewrites in a row, each of the previous result.")
    store_evolutions: bool = Field(False, description="Keep every round's result (a list) instead of the last.")
    generate_answers: bool = Field(False, description="Answer each kept instruction (one more call each).")
    include_original_instruction: bool = Field(
        False, description="With store_evolutions: put the original instruction first in the list.")
    mutation_templates: dict[str, str] | None = Field(
        None, max_length=32,
        description="{name: template} replacing the built-in mutations; `<PROMPT>` in a template is replaced "
                    "by the instruction. null = the built-in ones.")

    @field_validator("mutation_templates")
    @classmethod
    def _templates(cls, value):
        return check_templates(value, (PROMPT,))


class EvolInstruct(Task):
    name = "evol-instruct"
    description = ("Evol-Instruct (WizardLM): rewrite the instruction `num_evolutions` times with random "
                   "mutations (constraints, deepening, concretizing, reasoning steps, breadth); "
                   "optionally answer the result.")
    inputs = ("instruction",)
    outputs = ("evolved_instruction", "evolved_instructions", "answer", "answers")
    Params = EvolParams
    mutations: tuple[str, ...] = INSTRUCT_MUTATIONS

    def output_columns(self, params: EvolParams) -> tuple[str, ...]:
        store = params.store_evolutions
        cols: tuple[str, ...] = ("evolved_instructions",) if store else ("evolved_instruction",)
        if params.generate_answers:
            cols += ("answers",) if store else ("answer",)
        return cols

    def mutation_prompt(self, ctx: RowContext, step: str, instruction: str, params: EvolParams) -> str:
        custom = params.mutation_templates
        names = list(custom) if custom is not None else list(self.mutations)
        name = ctx.rng(step).choice(names)
        return fill(custom[name], instruction) if custom is not None else mutate(name, instruction)

    async def run(self, ctx: RowContext, row: dict[str, Any], params: EvolParams) -> dict[str, Any]:
        current = row["instruction"]
        kept = [current] if params.include_original_instruction else []
        for k in range(params.num_evolutions):
            step = f"evol{k}"
            answer = await ctx.chat(user(self.mutation_prompt(ctx, step, current, params)), step=step)
            try:
                current = after_last_prompt(answer)
            except ParseError as exc:
                raise ParseError(f"evolution {k + 1}: {exc}") from None
            kept.append(current)
        out: dict[str, Any] = {}
        store = params.store_evolutions
        if store:
            out["evolved_instructions"] = kept
        else:
            out["evolved_instruction"] = current
        if params.generate_answers:
            # distilabel 1.5.3 mis-pairs answers with rows here; ours answers each row's own
            # final instruction (or every kept one with store_evolutions)
            targets = kept if store else [current]
            answers = [await ctx.chat(user(text), step=f"answer{j}") for j, text in enumerate(targets)]
            out["answers" if store else "answer"] = answers if store else answers[0]
        return out


class EvolComplexity(EvolInstruct):
    name = "evol-complexity"
    description = ("Evol-Complexity (DEITA): as evol-instruct, with the complexity mutations only "
                   "(constraints, deepening, concretizing, reasoning steps).")
    mutations = COMPLEXITY_MUTATIONS


class EvolQualityParams(TaskParams):
    num_evolutions: int = Field(1, ge=1, le=20, description="Rewrites in a row, each of the previous result.")
    store_evolutions: bool = Field(False, description="Keep every round's result (a list) instead of the last.")
    include_original_response: bool = Field(
        False, description="With store_evolutions: put the original response first in the list.")
    mutation_templates: dict[str, str] | None = Field(
        None, max_length=32,
        description="{name: template} replacing the built-in mutations; `<PROMPT>` is replaced by the "
                    "instruction and `<RESPONSE>` by the latest response. null = the built-in ones.")

    @field_validator("mutation_templates")
    @classmethod
    def _templates(cls, value):
        return check_templates(value, (PROMPT, RESPONSE))


class EvolQuality(Task):
    name = "evol-quality"
    description = ("Evol-Quality (DEITA): rewrite the response to the instruction `num_evolutions` times "
                   "with random mutations (helpfulness, relevance, deepening, creativity, details).")
    inputs = ("instruction", "response")
    outputs = ("evolved_response", "evolved_responses")
    Params = EvolQualityParams

    def output_columns(self, params: EvolQualityParams) -> tuple[str, ...]:
        return ("evolved_responses",) if params.store_evolutions else ("evolved_response",)

    def mutation_prompt(self, ctx: RowContext, step: str, instruction: str, response: str,
                        params: EvolQualityParams) -> str:
        custom = params.mutation_templates
        names = list(custom) if custom is not None else list(QUALITY_METHODS)
        name = ctx.rng(step).choice(names)
        return fill(custom[name] if custom is not None else _quality_text(name), instruction, response)

    async def run(self, ctx: RowContext, row: dict[str, Any], params: EvolQualityParams) -> dict[str, Any]:
        instruction, current = row["instruction"], row["response"]
        kept = [current] if params.include_original_response else []
        for k in range(params.num_evolutions):
            step = f"evol{k}"
            prompt = self.mutation_prompt(ctx, step, instruction, current, params)
            current = (await ctx.chat(user(prompt), step=step)).strip()
            if not current:
                raise ParseError(f"evolution {k + 1}: the answer is empty")
            kept.append(current)
        if params.store_evolutions:
            return {"evolved_responses": kept}
        return {"evolved_response": current}


TASKS = (EvolInstruct(), EvolComplexity(), EvolQuality())
