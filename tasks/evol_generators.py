"""evol-instruct-generator and evol-complexity-generator: Evol-Instruct with no input rows.

The whole request is one algorithm (so these tasks override `stream`):

- `num_instructions` slots. A fresh slot holds a seed prompt, "write one question or
  request containing one or more of the following words: ..." with 1 to 4 nouns drawn
  from tasks/nouns.txt; an evolving slot holds the last instruction it produced.
- Each round sends one call per active slot, concurrently: a fresh slot sends its seed
  prompt; an evolving one a random mutation of its instruction (FRESH_START among them,
  which swaps it for a new seed prompt).
- The text after the answer's last `Prompt#:` is accepted when its length in characters
  lies in [min_length, max_length]; the slot then starts afresh. Otherwise the slot keeps
  evolving that text.
- It stops at `num_instructions` accepted, or after `max_iterations` rounds (distilabel
  loops for ever); each missing instruction is then a failed row (`llm_error`).

Deliberate differences from distilabel: a round runs only as many slots as instructions
are still missing (evolving slots before fresh ones), so the last rounds do not pay for
answers that would be thrown away; acceptances are taken in slot order once the round is over, and every
random choice comes from `rng(seed, slot, round)`, so the same request gives the same
rows whatever the concurrency.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator, model_validator

from llm_clients.base import LLMError, Usage
from llm_clients.errors import clean_message, row_error

from .base import ParseError, RowContext, Task, TaskParams, TaskRun
from .evol import COMPLEXITY_MUTATIONS, FRESH_START, INSTRUCT_MUTATIONS, PROMPT, check_templates, fill, mutate, user
from .parsing import after_last_prompt
from .rendering import render
from .streaming import Emit, produced

NOUNS_FILE = Path(__file__).resolve().parent / "nouns.txt"


@lru_cache(maxsize=1)
def nouns() -> tuple[str, ...]:
    return tuple(w.strip() for w in NOUNS_FILE.read_text().splitlines() if w.strip())


def fresh_prompt(rng: random.Random, template: str | None = None) -> str:
    """A seed prompt with 1 to 4 random nouns: the built-in one, or `template` with the nouns
    in place of `<PROMPT>`."""
    words = ", ".join(rng.sample(nouns(), rng.randint(1, 4)))
    return fill(template, words) if template is not None else render("evol-fresh-start", words=words)


class EvolGeneratorParams(TaskParams):
    num_instructions: int = Field(..., ge=1, le=100_000, description="How many instructions to generate.")
    generate_answers: bool = Field(False, description="Answer each accepted instruction (one more call each).")
    min_length: int = Field(512, ge=0, description="Shortest accepted instruction, in characters.")
    max_length: int = Field(1024, ge=1, description="Longest accepted instruction, in characters.")
    max_iterations: int = Field(10, ge=1, le=1000,
                                description="Rounds before giving up; each missing instruction is a failed row.")
    mutation_templates: dict[str, str] | None = Field(
        None, max_length=32,
        description="{name: template} replacing the built-in mutations; `<PROMPT>` in a template is replaced "
                    "by the instruction. A `FRESH_START` entry replaces the seed prompt, its `<PROMPT>` "
                    "by the sampled nouns. null = the built-in ones.")

    @field_validator("mutation_templates")
    @classmethod
    def _templates(cls, value):
        return check_templates(value, (PROMPT,))

    @model_validator(mode="after")
    def _lengths(self):
        if self.min_length > self.max_length:
            raise ValueError(f"min_length ({self.min_length}) is more than max_length ({self.max_length})")
        return self


@dataclass(slots=True)
class _Tally:
    """What the calls behind one output row cost, and its last exchange."""

    usage: Usage = field(default_factory=Usage)
    llm_calls: int = 0
    raw_input: Any = None
    raw_output: Any = None
    model_name: str | None = None

    def add(self, ctx: RowContext) -> None:
        self.usage = self.usage + ctx.usage
        self.llm_calls += ctx.llm_calls
        self.raw_input, self.raw_output = ctx.raw_input, ctx.raw_output
        self.model_name = ctx.model_name or self.model_name


@dataclass(slots=True)
class _Slot:
    index: int
    text: str | None = None  # None: fresh, the next call sends a new seed prompt
    tally: _Tally = field(default_factory=_Tally)


class _EvolGenerator(Task):
    inputs = ()
    outputs = ("instruction", "answer")
    generator = True
    split = "whole"  # one algorithm over every generation (stream below)
    Params = EvolGeneratorParams
    mutations: tuple[str, ...] = ()

    def output_columns(self, params: EvolGeneratorParams) -> tuple[str, ...]:
        return ("instruction", "answer") if params.generate_answers else ("instruction",)

    def num_units(self, params: EvolGeneratorParams, rows: list[dict]) -> int:
        return params.num_instructions

    def prompt(self, slot: _Slot, rng: random.Random, params: EvolGeneratorParams) -> str:
        custom = params.mutation_templates
        fresh = custom.get(FRESH_START) if custom is not None else None
        if slot.text is None:
            return fresh_prompt(rng, fresh)
        names = [n for n in custom if n != FRESH_START] if custom is not None else list(self.mutations)
        name = rng.choice((*names, FRESH_START))
        if name == FRESH_START:
            return fresh_prompt(rng, fresh)
        return fill(custom[name], slot.text) if custom is not None else mutate(name, slot.text)

    async def _call(self, run: TaskRun, slot: int, tally: _Tally, step: str, content: str) -> str:
        # a fresh context per call: checkpoints are keyed by (slot, step), costs go to the row's tally
        ctx = run.context(slot)
        try:
            return await ctx.chat(user(content), step=step)
        finally:
            tally.add(ctx)
            run.usage = run.usage + ctx.usage

    async def stream(self, run: TaskRun) -> AsyncIterator[tuple[int, dict[str, Any]]]:
        params: EvolGeneratorParams = run.params
        wanted = set(run.units) if run.units is not None else None

        async def produce(put: Emit[tuple[int, dict[str, Any]]]) -> None:
            def emit(index: int, outputs: dict[str, Any], tally: _Tally, error: dict | None) -> None:
                if wanted is None or index in wanted:
                    put((index, self._row(outputs, tally, error, run)))

            async def answer(index: int, slot: int, tally: _Tally, step: str, instruction: str) -> None:
                try:
                    text = await self._call(run, slot, tally, step, instruction)
                    emit(index, {"instruction": instruction, "answer": text}, tally, None)
                except LLMError as exc:
                    emit(index, {}, tally, row_error(exc, run.llm))

            async with asyncio.TaskGroup() as answering:  # answers run while the next round evolves
                await rounds(emit, lambda *args: answering.create_task(answer(*args)))

        async def rounds(emit: Callable[[int, dict[str, Any], _Tally, dict | None], None],
                         answer: Callable[[int, int, _Tally, str, str], object]) -> None:
            n = params.num_instructions
            slots = [_Slot(i) for i in range(n)]
            accepted, last_error = 0, None
            for r in range(params.max_iterations):
                step = f"evol{r}"
                # the slots furthest along first: an evolving text is worth more than a fresh start
                active = sorted(slots, key=lambda s: (s.text is None, s.index))[: n - accepted]

                async def evolve(slot: _Slot) -> str | None:
                    nonlocal last_error
                    content = self.prompt(slot, run.context(slot.index).rng(step), params)
                    try:
                        return after_last_prompt(await self._call(run, slot.index, slot.tally, step, content))
                    except (LLMError, ParseError) as exc:
                        last_error = exc
                        return None

                results = await asyncio.gather(*(evolve(s) for s in active))
                for slot, text in zip(active, results):
                    if text is not None and params.min_length <= len(text) <= params.max_length:
                        index, accepted = accepted, accepted + 1
                        if params.generate_answers:
                            answer(index, slot.index, slot.tally, f"answer{r}", text)
                        else:
                            emit(index, {"instruction": text}, slot.tally, None)
                        slot.text, slot.tally = None, _Tally()
                    elif text is not None:
                        slot.text = text
                    else:  # no usable answer: start this slot over
                        slot.text = None
                if accepted == n:
                    break
            left = sorted(slots, key=lambda s: (s.text is None, s.index))
            for k, index in enumerate(range(accepted, n)):
                message = (f"only {accepted} of {n} instructions had {params.min_length} to {params.max_length} "
                           f"characters after max_iterations ({params.max_iterations}) rounds")
                if last_error is not None:
                    message += f"; last error: {clean_message(str(last_error), run.llm.name)}"
                emit(index, {}, left[k].tally, {"type": "llm_error", "code": "llm_error", "status": None,
                                                "message": message})

        async for item in produced(produce):
            yield item

    def _row(self, outputs: dict[str, Any], tally: _Tally, error: dict | None, run: TaskRun) -> dict[str, Any]:
        ctx = run.context(-1)
        ctx.usage, ctx.llm_calls = tally.usage, tally.llm_calls
        ctx.raw_input, ctx.raw_output, ctx.model_name = tally.raw_input, tally.raw_output, tally.model_name
        return self.build_row({}, outputs, ctx, error, run)


class EvolInstructGenerator(_EvolGenerator):
    name = "evol-instruct-generator"
    description = ("Evol-Instruct from scratch: evolve seed prompts built from random nouns until "
                   "`num_instructions` instructions of `min_length` to `max_length` characters are accepted.")
    mutations = INSTRUCT_MUTATIONS


class EvolComplexityGenerator(_EvolGenerator):
    name = "evol-complexity-generator"
    description = ("As evol-instruct-generator, with the complexity mutations only "
                   "(no breadth mutation).")
    mutations = COMPLEXITY_MUTATIONS


TASKS = (EvolInstructGenerator(), EvolComplexityGenerator())
