"""The `local` provider: the sidecar's engine run in this process (sidecar.engine). One
engine per model and device for the whole process, shared with a sidecar app in the same
process; loaded by `start()` in the app's lifespan, or on first use.

Nothing is retried here either: a full queue is a TransientError (with Retry-After) for
the CallPolicy, an impossible request (too long, bad params) an LLMError.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from sidecar.params import EngineError, GenerationResult, Grammar, Overloaded, SamplingParams, StopTrimmer

from .base import Completion, GenerationKwargs, LLMClient, Message, Usage
from .limits import LLMError, TransientError

if TYPE_CHECKING:
    from sidecar.engine import Engine


class LocalClient(LLMClient):
    provider = "local"
    capabilities = frozenset({"chat", "stream", "raw", "chat_template", "embed"})

    def __init__(self, name, config, policy):
        super().__init__(name, config, policy)
        self._engine: Engine | None = None

    async def start(self) -> None:
        await self.engine()

    async def engine(self) -> Engine:
        if self._engine is None:
            from sidecar.engine import get_engine  # torch is imported here, not with the app

            # get_engine blocks while loading (seconds), and serialises concurrent first calls
            with _engine_errors():
                engine = await asyncio.to_thread(get_engine, self.config.model_path, self.config.device)
            self._engine = engine
            self.model = self.config.model or engine.model_id
        return self._engine

    # ---- provider hooks ----

    async def _chat(self, messages: list[Message], kwargs: GenerationKwargs, model: str) -> Completion:
        engine = await self.engine()
        with _engine_errors():
            prompt = engine.apply_chat_template(messages)
            result = await engine.generate(prompt, sampling_params(kwargs, chat=True))
        return _completion(result, model or self.model)

    async def _stream_chat(self, messages, kwargs, model, on_delta: Callable[[str], Any]) -> Completion:
        engine = await self.engine()
        params = sampling_params(kwargs, chat=True)
        trimmer = StopTrimmer(params.stop)

        def on_token(token) -> None:
            if not token.special and (text := trimmer.feed(token.text)):
                on_delta(text)

        with _engine_errors():
            prompt = engine.apply_chat_template(messages)
            result = await engine.generate(prompt, params, on_token=on_token)
        if tail := trimmer.flush():
            on_delta(tail)
        return _completion(result, model or self.model)

    async def _complete(self, prompt: str, kwargs: GenerationKwargs, model: str) -> Completion:
        engine = await self.engine()
        with _engine_errors():
            result = await engine.generate(prompt, sampling_params(kwargs))
        return _completion(result, model or self.model)

    async def _apply_chat_template(self, messages: list[Message]) -> str:
        engine = await self.engine()
        with _engine_errors():
            return engine.apply_chat_template(messages)

    async def _embed(self, inputs: list[str | list[Message]]) -> list[list[float]]:
        engine = await self.engine()
        with _engine_errors():
            return await engine.embed(inputs)


def sampling_params(kwargs: GenerationKwargs, *, chat: bool = False) -> SamplingParams:
    """The sidecar's routes' defaults: a chat samples unless told not to (OpenAI's
    temperature 1), a raw completion is greedy unless told to sample (TGI's /generate)."""
    given = kwargs.given()
    given["stop"] = tuple(given.get("stop") or ())
    if chat:
        given.setdefault("do_sample", True)
    if kwargs.json_schema is not None:
        given["grammar"] = Grammar.json_schema(kwargs.json_schema)
    with _engine_errors():
        return SamplingParams(**given)


def _completion(result: GenerationResult, model: str) -> Completion:
    # Like the other providers: the text ends before a stop sequence, reasons are OpenAI's.
    return Completion(result.completion_text, model, Usage(result.input_tokens, result.output_tokens),
                      result.openai_finish_reason)


@contextmanager
def _engine_errors() -> Iterator[None]:
    try:
        yield
    except Overloaded as exc:
        raise TransientError(f"local model: {exc}", retry_after=exc.retry_after) from exc
    except EngineError as exc:  # InvalidRequest, a failed load or step: retrying would not help
        raise LLMError(f"local model: {exc}") from exc
