"""generate-embeddings: the final layer's hidden state at the last token of the
chat-templated text (generation prompt added), as distilabel's GenerateEmbeddings does.
Needs a backend that exposes hidden states (`local`, or `tgi` pointed at `synthserve
sidecar`); the backend batches concurrent rows on the model."""

from __future__ import annotations

from typing import Any

from llm_clients.base import Message

from .base import RowContext, RowError, Task
from .generation import ROLES


def as_messages(text: str | list[Message]) -> list[Message]:
    """A string is one user message, so that every input goes through the chat template."""
    if isinstance(text, str):
        return [{"role": "user", "content": text}]
    return [{"role": m["role"], "content": m["content"]} for m in text]


class GenerateEmbeddings(Task):
    name = "generate-embeddings"
    description = ("Embed `text` (a string or OpenAI-format messages) with the model's last-token final "
                   "hidden state. Needs a local model backend.")
    inputs = ("text",)
    outputs = ("embedding",)
    requires = frozenset({"embed"})

    def check_row(self, row: dict[str, Any], params) -> None:
        text = row.get("text")
        if isinstance(text, str):
            return
        if not isinstance(text, list) or not text:
            raise RowError("text", "column 'text' must be a string or a non-empty list of {role, content}")
        for j, m in enumerate(text):
            if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
                raise RowError("text", f"text[{j}] must be {{role: one of {list(ROLES)}, content: string}}")

    async def run(self, ctx: RowContext, row: dict[str, Any], params) -> dict[str, Any]:
        (vector,) = await ctx.embed([as_messages(row["text"])])
        return {"embedding": vector}


TASKS = (GenerateEmbeddings(),)
