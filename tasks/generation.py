"""text-generation and chat-generation: one prompt (or conversation) in, one or more
generations out."""

from __future__ import annotations

import random
from typing import Any

from pydantic import Field, field_validator

from llm_clients.base import Message

from .base import InputError, ParseError, RowContext, RowError, Task
from .rendering import TemplateError, compile_user_template, off_loop, render_user_template
from .structured import StructuredOutputParams, structured_answer

ROLES = ("system", "user", "assistant", "tool")
DEFAULT_TEMPLATE = "{{ instruction }}"


class GenerationParams(StructuredOutputParams):
    system_prompt: str | None = Field(None, description="System message; a row's `system_prompt` column wins.")
    num_generations: int = Field(1, ge=1, le=64, description="Generations per row (the backend's native `n` where it has one).")
    group_generations: bool = Field(False, description="One row with list outputs instead of one row per generation.")


class TextGenerationParams(GenerationParams):
    template: str = Field(DEFAULT_TEMPLATE, max_length=100_000,
                          description="Jinja2 template of the user message, rendered sandboxed with the row's `columns`.")
    columns: list[str] = Field(["instruction"], min_length=1, max_length=64,
                               description="Row columns the template uses (all of them, and only them); "
                                           "one column may be given as a string.")

    @field_validator("columns", mode="before")
    @classmethod
    def _one_column(cls, value):
        return [value] if isinstance(value, str) else value


class _Generation(Task):
    outputs = ("generation",)

    def output_columns(self, params: GenerationParams) -> tuple[str, ...]:
        return ("generation", "generation_parsed") if params.structured_output else self.outputs

    def rows_per_unit(self, params: GenerationParams) -> int:
        return 1 if params.group_generations else params.num_generations

    def check_row(self, row: dict[str, Any], params: GenerationParams) -> None:
        sp = row.get("system_prompt")
        if sp is not None and not isinstance(sp, str):
            raise RowError("system_prompt", "column 'system_prompt' must be a string")

    def system_prompt(self, row: dict[str, Any], params: GenerationParams) -> str | None:
        return row.get("system_prompt") or params.system_prompt

    async def generate(self, ctx: RowContext, messages: list[Message], params: GenerationParams) -> dict | list:
        schema = params.structured_output.json_schema if params.structured_output else None
        if schema is not None:
            ctx.kwargs = ctx.kwargs.with_json_schema(schema)
        k = params.num_generations
        texts = [await ctx.chat(messages, stream=True)] if k == 1 else await ctx.chat_n(messages, k)
        if schema is None:
            return {"generation": texts} if params.group_generations else [{"generation": t} for t in texts]
        results = [_parsed(t, schema) for t in texts]
        if not params.group_generations:
            return results  # an answer that does not validate fails its own row, its text kept
        failed = [j for j, r in enumerate(results) if isinstance(r, ParseError)]
        grouped = {"generation": texts,
                   "generation_parsed": [None if j in failed else r["generation_parsed"] for j, r in enumerate(results)]}
        if failed:
            which = ", ".join(str(j + 1) for j in failed)
            raise ParseError(f"generation {which} of {k}: {results[failed[0]]}", outputs=grouped)
        return grouped


class TextGeneration(_Generation):
    name = "text-generation"
    description = "Generate a response to an instruction (or a custom Jinja2 template over row columns)."
    inputs = ("instruction",)
    Params = TextGenerationParams

    def check(self, params: TextGenerationParams, llm) -> None:
        super().check(params, llm)
        try:
            compile_user_template(params.template, tuple(params.columns))
        except TemplateError as exc:
            raise InputError(f"params.template: {exc}") from exc

    def check_row(self, row: dict[str, Any], params: TextGenerationParams) -> None:
        super().check_row(row, params)
        for col in params.columns:
            if row.get(col) is None:
                raise RowError(col, f"missing column {col!r}")
        if "instruction" in params.columns and not isinstance(row["instruction"], str):
            raise RowError("instruction", "column 'instruction' must be a string")
        if params.template != DEFAULT_TEMPLATE:
            try:  # rendering is cheap: a template that fails on this row fails before any call
                self.format(row, params, None)
            except TemplateError as exc:
                raise InputError(f"params.template: {exc}") from None

    def format(self, row: dict[str, Any], params: TextGenerationParams, rng: random.Random) -> list[Message]:
        if params.template == DEFAULT_TEMPLATE:  # the common case skips Jinja: ~10% of a row's CPU
            prompt = row["instruction"]
        else:
            template = compile_user_template(params.template, tuple(params.columns))
            prompt = render_user_template(template, {c: row[c] for c in params.columns})
        system = self.system_prompt(row, params)
        return ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]

    async def run(self, ctx: RowContext, row: dict[str, Any], params: TextGenerationParams):
        if params.template == DEFAULT_TEMPLATE:
            return await self.generate(ctx, self.format(row, params, ctx.rng()), params)
        # a user template may render for up to rendering.RENDER_TIMEOUT_S: off the event loop
        return await self.generate(ctx, await off_loop(self.format, row, params, ctx.rng()), params)


class ChatGeneration(_Generation):
    name = "chat-generation"
    description = "Continue a conversation (OpenAI-format messages whose last one is from the user)."
    inputs = ("messages",)
    Params = GenerationParams

    def check_row(self, row: dict[str, Any], params: GenerationParams) -> None:
        super().check_row(row, params)
        messages = row.get("messages")
        if not isinstance(messages, list) or not messages:
            raise RowError("messages", "column 'messages' must be a non-empty list of {role, content}")
        for j, m in enumerate(messages):
            if not isinstance(m, dict) or m.get("role") not in ROLES or not _content_ok(m):
                raise RowError("messages", f"messages[{j}] must be {{role: one of {list(ROLES)}, content: a string "
                                           f"or a list of content parts}} (null content: assistant only)")
        if messages[-1]["role"] != "user":
            raise RowError("messages", "the last message must be from the user")

    def format(self, row: dict[str, Any], params: GenerationParams, rng: random.Random) -> list[Message]:
        messages = [dict(m) for m in row["messages"]]  # passed through: content parts, tool calls and all
        system = self.system_prompt(row, params)
        if system:
            # the row's (or param's) system prompt replaces one already in the conversation
            messages = [{"role": "system", "content": system}] + [m for m in messages if m["role"] != "system"]
        return messages

    async def run(self, ctx: RowContext, row: dict[str, Any], params: GenerationParams):
        return await self.generate(ctx, self.format(row, params, ctx.rng()), params)


def _content_ok(message: dict[str, Any]) -> bool:
    content = message.get("content")
    if content is None:
        return message["role"] == "assistant"  # e.g. one that only calls tools
    return isinstance(content, str) or (isinstance(content, list) and all(isinstance(p, dict) for p in content))


def _parsed(text: str, schema: dict[str, Any]) -> dict[str, Any] | ParseError:
    try:
        return {"generation": text, "generation_parsed": structured_answer(text, schema)}
    except ParseError as exc:
        return ParseError(str(exc), outputs={"generation": text, "generation_parsed": None})


TASKS = (TextGeneration(), ChatGeneration())
