"""OpenAI request bodies as rows: one row's `body` is a `/v1/chat/completions` or
`/v1/embeddings` request, its `response` the answer body OpenAI would give. What a served
OpenAI batch (app.openai_batch, docs/api.md "OpenAI Batch API, served") runs, line by
line, as a job; usable as any task too."""

from __future__ import annotations

import time
from typing import Any

from pydantic import ValidationError

from llm_clients.base import GenerationKwargs

from .base import RowContext, RowError, Task
from .generation import ROLES


def generation_kwargs(body: dict[str, Any], base: GenerationKwargs) -> GenerationKwargs:
    """The body's sampling options in the service's names, over the job's own."""
    stop = body.get("stop")
    given = {"max_new_tokens": body.get("max_completion_tokens") or body.get("max_tokens"),
             "temperature": body.get("temperature"), "top_p": body.get("top_p"),
             "stop": [stop] if isinstance(stop, str) else stop, "seed": body.get("seed"),
             "frequency_penalty": body.get("frequency_penalty"), "presence_penalty": body.get("presence_penalty")}
    try:
        return GenerationKwargs.model_validate({**base.given(), **{k: v for k, v in given.items() if v is not None}})
    except ValidationError as exc:
        raise RowError("body", "; ".join(f"body.{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()))


def _body(row: dict[str, Any]) -> dict[str, Any]:
    body = row.get("body")
    if not isinstance(body, dict):
        raise RowError("body", "column 'body' must be a request object")
    return body


class ChatCompletions(Task):
    name = "openai-chat-completions"
    description = ("`body`, an OpenAI /v1/chat/completions request (messages, max_tokens, temperature, ...), "
                   "answered as OpenAI would: `response`, a chat.completion object.")
    inputs = ("body",)
    outputs = ("response",)

    def check_row(self, row: dict[str, Any], params) -> None:
        body = _body(row)
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages or not all(
                isinstance(m, dict) and m.get("role") in ROLES and isinstance(m.get("content"), str) for m in messages):
            raise RowError("body", f"body.messages must be a non-empty list of {{role: one of {list(ROLES)}, "
                                   "content: string}")
        if body.get("n", 1) != 1:
            raise RowError("body", "body.n: one choice per request")
        generation_kwargs(body, GenerationKwargs())

    async def run(self, ctx: RowContext, row: dict[str, Any], params) -> dict[str, Any]:
        body = row["body"]
        kwargs = generation_kwargs(body, ctx.kwargs)
        text = await ctx.chat([{"role": m["role"], "content": m["content"]} for m in body["messages"]], kwargs=kwargs)
        usage = ctx.usage
        cut = kwargs.max_new_tokens is not None and usage.output_tokens >= kwargs.max_new_tokens
        return {"response": {
            "id": f"chatcmpl-{ctx.rng('id').getrandbits(96):024x}", "object": "chat.completion",
            "created": int(time.time()), "model": ctx.model_name,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
                         "finish_reason": "length" if cut else "stop"}],
            "usage": {"prompt_tokens": usage.input_tokens, "completion_tokens": usage.output_tokens,
                      "total_tokens": usage.input_tokens + usage.output_tokens}}}


class Embeddings(Task):
    name = "openai-embeddings"
    description = ("`body`, an OpenAI /v1/embeddings request (`input`: a string or a list of them), answered "
                   "as OpenAI would: `response`, a list of embeddings. Needs a backend that embeds.")
    inputs = ("body",)
    outputs = ("response",)
    requires = frozenset({"embed"})

    def check_row(self, row: dict[str, Any], params) -> None:
        texts = _body(row).get("input")
        if isinstance(texts, str):
            texts = [texts]
        if not isinstance(texts, list) or not texts or not all(isinstance(t, str) and t for t in texts):
            raise RowError("body", "body.input must be a non-empty string or list of them")

    async def run(self, ctx: RowContext, row: dict[str, Any], params) -> dict[str, Any]:
        texts = row["body"]["input"]
        vectors = await ctx.embed([texts] if isinstance(texts, str) else texts)
        return {"response": {
            "object": "list", "model": ctx.model_name, "usage": {"prompt_tokens": 0, "total_tokens": 0},
            "data": [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vectors)]}}


TASKS = (ChatCompletions(), Embeddings())
