"""What every provider shares: the message/completion types, the generation kwargs, the
client protocol, and the row-level LLMError.

A provider subclasses LLMClient and implements the `_`-prefixed methods for what it can
do (declared in `capabilities`). The public methods put every call through the backend's
CallPolicy (concurrency limit, retries, timeout), so providers never loop or lock.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr

from .limits import CallPolicy, LLMError
from .ratelimit import estimate_tokens

__all__ = [
    "Capability", "Completion", "GenerationKwargs", "LLMClient", "LLMError", "Message", "Usage",
]

Message = dict[str, Any]  # OpenAI format: {"role": ..., "content": ...}
Capability = Literal["chat", "stream", "raw", "chat_template", "embed"]
T = TypeVar("T")


@dataclass(slots=True)
class Usage:
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0  # at the backend's price_*_per_mtok; nothing for answers from the cache
    cached_calls: int = 0  # calls answered from the call cache (llm_clients.cache)

    def __add__(self, other: Usage) -> Usage:
        return Usage(self.input_tokens + other.input_tokens, self.output_tokens + other.output_tokens,
                     self.cost_usd + other.cost_usd, self.cached_calls + other.cached_calls)

    def as_dict(self) -> dict[str, Any]:
        return {"input_tokens": self.input_tokens, "output_tokens": self.output_tokens,
                "cost_usd": round(self.cost_usd, 9), "cached_calls": self.cached_calls}


@dataclass(slots=True)
class Completion:
    text: str
    model: str
    usage: Usage = field(default_factory=Usage)
    finish_reason: str | None = None


class GenerationKwargs(BaseModel):
    """The one set of generation options a request may give; each provider maps them to its
    own names (`max_new_tokens` -> `max_tokens` for OpenAI and Mistral)."""

    model_config = ConfigDict(extra="forbid")

    max_new_tokens: int | None = Field(None, ge=1, le=131_072)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=1)
    stop: list[str] | None = Field(None, max_length=16)
    seed: int | None = None
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    repetition_penalty: float | None = Field(None, gt=0)
    do_sample: bool | None = None

    # The JSON schema the answer must follow (a task's structured output). Private: a
    # request's generation_kwargs cannot set it, and it is not one of the `given` options;
    # each provider sends it in its own native form.
    _json_schema: dict[str, Any] | None = PrivateAttr(None)

    def given(self) -> dict[str, Any]:
        return self.model_dump(exclude_none=True)

    @property
    def json_schema(self) -> dict[str, Any] | None:
        # read from pydantic's own store: `self._json_schema` goes through BaseModel.__getattr__
        # (~3.5 us, a tenth of a call's client CPU: every call reads it twice)
        private = self.__pydantic_private__
        return private.get("_json_schema") if private else None

    def with_json_schema(self, schema: dict[str, Any] | None) -> GenerationKwargs:
        copy = self.model_copy()
        copy._json_schema = schema
        return copy


class LLMClient:
    """One configured backend. Built once per process (llm_clients.build_client) and shared
    by every request and job, so its CallPolicy limit holds across all of them."""

    provider: ClassVar[str]
    capabilities: frozenset[Capability] = frozenset({"chat"})
    native_n: ClassVar[bool] = False  # one call returns n completions

    def __init__(self, name: str, config, policy: CallPolicy):
        self.name = name
        self.config = config
        self.policy = policy
        self.model: str = config.model or ""

    # ---- public API: every call goes through the policy ----

    async def chat(self, messages: list[Message], kwargs: GenerationKwargs, *,
                   model: str | None = None, n: int = 1) -> list[Completion]:
        """`n` completions of one conversation. Providers with a native `n` override
        `_chat_n`; others make n calls, each under the limit."""
        return await self._chat_n(messages, kwargs, model or self.model, n)

    async def stream_chat(self, messages: list[Message], kwargs: GenerationKwargs, *,
                          model: str | None = None,
                          on_delta: Callable[[str], Any]) -> Completion:
        """Stream one completion, calling `on_delta` per text delta; returns the whole.
        Retried only while nothing has been streamed."""
        self.require("stream")
        started = False

        def emit(delta: str) -> None:
            nonlocal started
            started = True
            on_delta(delta)

        return await self.policy.run(lambda: self._stream_chat(messages, kwargs, model or self.model, emit),
                                     retry_if=lambda: not started, tokens=estimate_tokens(messages, kwargs))

    async def complete(self, prompt: str, kwargs: GenerationKwargs, *,
                       model: str | None = None) -> Completion:
        """Raw completion of `prompt`, no chat template (magpie)."""
        self.require("raw")
        return await self.policy.run(lambda: self._complete(prompt, kwargs, model or self.model),
                                     tokens=estimate_tokens(prompt, kwargs))

    async def apply_chat_template(self, messages: list[Message]) -> str:
        """The model's chat template applied, generation prompt added."""
        self.require("chat_template")
        return await self.policy.run(lambda: self._apply_chat_template(messages))

    async def embed(self, inputs: list[str | list[Message]]) -> list[list[float]]:
        """Last-token final hidden states (docs/api.md, generate-embeddings)."""
        self.require("embed")
        return await self.policy.run(lambda: self._embed(inputs), tokens=estimate_tokens(inputs))

    def require(self, capability: Capability) -> None:
        if capability not in self.capabilities:
            raise LLMError(f"backend {self.name!r} ({self.provider}) cannot {capability}")

    async def start(self) -> None:
        """Called once in the app's lifespan: load a model, probe the server. Must not fail
        the app for a backend that is down; a failing call later marks its rows."""

    async def aclose(self) -> None:
        pass

    # ---- provider hooks ----

    async def _chat_n(self, messages, kwargs, model, n) -> list[Completion]:
        import asyncio
        tokens = estimate_tokens(messages, kwargs)
        one = lambda: self.policy.run(lambda: self._chat(messages, kwargs, model), tokens=tokens)  # noqa: E731
        if n == 1:
            return [await one()]
        return list(await asyncio.gather(*(one() for _ in range(n))))

    async def _chat(self, messages: list[Message], kwargs: GenerationKwargs, model: str) -> Completion:
        raise NotImplementedError

    async def _stream_chat(self, messages, kwargs, model, on_delta: Callable[[str], Any]) -> Completion:
        raise NotImplementedError

    async def _complete(self, prompt: str, kwargs: GenerationKwargs, model: str) -> Completion:
        raise NotImplementedError

    async def _apply_chat_template(self, messages: list[Message]) -> str:
        raise NotImplementedError

    async def _embed(self, inputs: list[str | list[Message]]) -> list[list[float]]:
        raise NotImplementedError
