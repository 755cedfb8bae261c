"""magpie and magpie-generator (Magpie, arXiv 2406.08464): an aligned model, given the chat
template of a conversation followed by the opening of a user turn (the pre-query template,
`<|im_start|>user\\n` for ChatML models), writes a user message of its own; then it answers
it as the assistant.

Per turn: one raw completion for the user message (stopping at the end-of-turn token),
then one for the reply (skipped after the last user turn with `end_with_user`);
`only_instruction` makes one call. The prompts come from the backend's own chat template:
the row's whole conversation is rendered once with a marker in place of every message
yet to be written, and each prompt is that text cut at the next marker, earlier markers
replaced by what the model wrote. A backend that cannot render its template gets ChatML.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

from pydantic import Field, field_validator

from llm_clients.base import GenerationKwargs, LLMError, Message

from .base import ParseError, RowContext, RowError, Task, TaskParams
from .rendering import render

# a prompt; a list to draw from; {name: prompt} to draw from uniformly (the name goes to
# system_prompt_key); {prompt: weight} by relative weight; {name: [prompt, p]} by
# probabilities that sum to 1 (distilabel's forms, and ours)
SystemPrompts = str | list[str] | dict[str, str | float | tuple[str, float]]
CHATML_END = "<|im_end|>"
# the end-of-turn token that follows a message in a rendered template: <|im_end|>,
# <|eot_id|>, <end_of_turn>, </s>, ... (else the first line of what follows, e.g. [/INST])
_SPECIAL = re.compile(r"^\s*(<\|[^|\s]+\|>|<[a-z_]+>|</s>)")


class MagpieParams(TaskParams):
    n_turns: int = Field(1, ge=1, le=32, description="User turns per conversation.")
    end_with_user: bool = Field(False, description="End on the last user message (no reply to it).")
    include_system_prompt: bool = Field(
        False, description="Keep the system prompt: a `system_prompt` column, and first in `conversation`.")
    only_instruction: bool = Field(False, description="One call: the user message only (`instruction`).")
    system_prompt: SystemPrompts | None = Field(
        None, description="When a row has no `system_prompt`: a string, a list to draw from, or a dict to "
                          "draw from: {name: prompt} (uniformly), {prompt: weight} (by relative weight) or "
                          "{name: [prompt, probability]} (probabilities summing to 1); the key drawn goes "
                          "to `system_prompt_key`.")

    @field_validator("system_prompt")
    @classmethod
    def _system_prompt(cls, value):
        if isinstance(value, list) and not value:
            raise ValueError("an empty list of system prompts")
        if isinstance(value, dict):
            values = list(value.values())
            if not values:
                raise ValueError("an empty dict of system prompts")
            if len({type(v) for v in values}) > 1:
                raise ValueError("use one form for every system prompt of the dict: {name: prompt}, "
                                 "{prompt: weight} or {name: [prompt, probability]}")
            if isinstance(values[0], str):
                return value
            weights = [_weight(v) for v in values]
            if any(w < 0 for w in weights) or sum(weights) <= 0:
                raise ValueError("system prompt weights must be >= 0 and not all 0")
            if isinstance(values[0], tuple) and abs(sum(weights) - 1) > 1e-6:
                raise ValueError(f"the probabilities of {{name: [prompt, probability]}} must sum to 1, "
                                 f"not {sum(weights):g}")
        return value


class MagpieGeneratorParams(MagpieParams):
    num_rows: int = Field(..., ge=1, le=100_000, description="How many rows to generate.")


def _weight(value: float | tuple[str, float]) -> float:
    return value if isinstance(value, int | float) else value[1]


def draw_system_prompt(param: SystemPrompts | None, rng) -> tuple[str | None, str | None]:
    """(system prompt, the dict key it was drawn under)."""
    if param is None or isinstance(param, str):
        return param, None
    if isinstance(param, list):
        return rng.choice(param), None
    keys = list(param)
    if isinstance(param[keys[0]], str):
        key = rng.choice(keys)
        return param[key], key
    key = rng.choices(keys, weights=[_weight(param[k]) for k in keys])[0]
    value = param[key]
    return (key if isinstance(value, int | float) else value[0]), key


def chatml(messages: list[Message]) -> str:
    turns = "".join(f"<|im_start|>{m['role']}\n{m['content']}{CHATML_END}\n" for m in messages)
    return turns + "<|im_start|>assistant\n"


def end_of_turn(after_message: str) -> str:
    """The end-of-turn token, from the text that follows a message in the template."""
    m = _SPECIAL.match(after_message)
    if m:
        return m.group(1)
    line = after_message.strip().split("\n", 1)[0].strip()
    return line or CHATML_END


class Conversation:
    """A row's conversation rendered once with markers for the messages to come."""

    def __init__(self, rendered: str, markers: list[str]):
        self.rendered, self.markers = rendered, markers
        for mk in markers:
            if rendered.count(mk) != 1:
                raise ValueError("the chat template does not render each message verbatim")
        self.filled: dict[str, str] = {}
        first = rendered.index(markers[0]) + len(markers[0])
        self.eot = end_of_turn(rendered[first:])

    def prompt(self, upto: str | None) -> str:
        """The text before marker `upto` (None: all of it), markers so far filled in."""
        text = self.rendered if upto is None else self.rendered[: self.rendered.index(upto)]
        for mk, value in self.filled.items():
            text = text.replace(mk, value)
        return text


@lru_cache(maxsize=1)
def _default_system_prompt() -> str:
    return render("magpie-system")


def _marker(kind: str, t: int) -> str:
    return f"@@MAGPIE_{kind}{t}@@"


class Magpie(Task):
    name = "magpie"
    description = ("Magpie: the model writes the user's messages itself (raw completion after the chat "
                   "template's user-turn opening) and answers them. Needs a raw-completion backend.")
    inputs = ("system_prompt",)
    outputs = ("instruction", "response", "conversation")
    Params = MagpieParams
    requires = frozenset({"raw"})

    def output_columns(self, params: MagpieParams) -> tuple[str, ...]:
        if params.only_instruction:
            cols: tuple[str, ...] = ("instruction",)
        elif params.n_turns == 1:
            cols = ("instruction", "response")
        else:
            cols = ("conversation",)
        if params.include_system_prompt:
            cols += ("system_prompt",)
        if isinstance(params.system_prompt, dict):
            cols += ("system_prompt_key",)
        return cols

    def failed_outputs(self, row: dict[str, Any], params: MagpieParams) -> dict[str, Any]:
        # distilabel's: an empty conversation rather than none
        return {"conversation": []} if "conversation" in self.output_columns(params) else {}

    def check_row(self, row: dict[str, Any], params: MagpieParams) -> None:
        sp = row.get("system_prompt")
        if sp is not None and not isinstance(sp, str):
            raise RowError("system_prompt", "column 'system_prompt' must be a string")

    async def render(self, ctx: RowContext, messages: list[Message]) -> str:
        if "chat_template" in ctx.llm.capabilities:
            return await ctx.llm.apply_chat_template(messages)
        return chatml(messages)

    async def run(self, ctx: RowContext, row: dict[str, Any], params: MagpieParams) -> dict[str, Any]:
        turns = 1 if params.only_instruction else params.n_turns
        key = None
        system = row.get("system_prompt")
        if not system:
            system, key = draw_system_prompt(params.system_prompt, ctx.rng("system_prompt"))
        if not system and turns > 1:
            system = _default_system_prompt()

        history: list[Message] = [{"role": "system", "content": system}] if system else []
        skeleton, markers = list(history), []
        for t in range(turns):
            markers.append(_marker("U", t))
            skeleton.append({"role": "user", "content": markers[-1]})
            if t < turns - 1:
                markers.append(_marker("A", t))
                skeleton.append({"role": "assistant", "content": markers[-1]})
        try:
            conv = Conversation(await self.render(ctx, skeleton), markers)
        except ValueError as exc:  # the backend's template, not the model's answer, is at fault
            raise LLMError(f"cannot build the magpie prompt: {exc}") from None
        stop = list(dict.fromkeys([*(ctx.kwargs.stop or []), conv.eot]))
        kwargs = ctx.kwargs.model_copy(update={"stop": stop})

        for t in range(turns):
            text = await self._complete(ctx, conv, kwargs, _marker("U", t), f"user{t}")
            if not text:
                raise ParseError(f"turn {t + 1}: the model wrote an empty user message")
            conv.filled[_marker("U", t)] = text
            history.append({"role": "user", "content": text})
            if params.only_instruction or (params.end_with_user and t == turns - 1):
                break
            upto = _marker("A", t) if t < turns - 1 else None
            text = await self._complete(ctx, conv, kwargs, upto, f"assistant{t}")
            conv.filled[_marker("A", t)] = text
            history.append({"role": "assistant", "content": text})

        return self.outputs_of(history, system, key, params)

    async def _complete(self, ctx: RowContext, conv: Conversation, kwargs: GenerationKwargs,
                        upto: str | None, step: str) -> str:
        text = await ctx.complete(conv.prompt(upto), step=step, kwargs=kwargs)
        return text.split(conv.eot, 1)[0].strip()  # servers that keep the stop string in the text

    def outputs_of(self, history: list[Message], system: str | None, key: str | None,
                   params: MagpieParams) -> dict[str, Any]:
        said = [m for m in history if m["role"] != "system"]
        out: dict[str, Any] = {}
        if params.only_instruction:
            out["instruction"] = said[0]["content"]
        elif params.n_turns == 1:
            out["instruction"] = said[0]["content"]
            out["response"] = said[1]["content"] if len(said) > 1 else None
        else:
            out["conversation"] = history if params.include_system_prompt else said
        if params.include_system_prompt:
            out["system_prompt"] = system
        if isinstance(params.system_prompt, dict):
            out["system_prompt_key"] = key
        return out


class MagpieGenerator(Magpie):
    name = "magpie-generator"
    description = "Magpie without input rows: exactly `num_rows` generated instructions or conversations."
    inputs = ()
    generator = True
    Params = MagpieGeneratorParams

    def num_units(self, params: MagpieGeneratorParams, rows: list[dict]) -> int:
        return params.num_rows


TASKS = (Magpie(), MagpieGenerator())
