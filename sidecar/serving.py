"""What the sidecar's TGI and OpenAI routes share: the engine dependency, generations as
one stream of tokens, and errors as TGI's bodies. No torch here."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Sequence
from functools import partial
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import Depends, Request
from fastapi.responses import JSONResponse

from . import protocol as p
from .params import EngineError, GenerationResult, InvalidRequest, Overloaded, SamplingParams, Token

if TYPE_CHECKING:
    from .engine import Engine

Job = tuple[str | list[int], SamplingParams]  # a prompt (text or token ids) and its options


class Unavailable(Exception):
    pass


async def _loaded_engine(request: Request) -> Engine:
    """Waits for the model while it loads (a request sent early is answered late, not 503)."""
    try:
        return await asyncio.shield(request.app.state.loading)
    except Exception as exc:
        raise Unavailable(f"the model failed to load: {exc}") from exc


EngineDep = Annotated[Any, Depends(_loaded_engine)]  # an Engine; Any keeps torch out of this module


class TokenStream:
    """Generations (an OpenAI request's choices) as one async iterator of (choice, token),
    then their results. All are queued at construction, so Overloaded and InvalidRequest
    are raised before any answer starts, and none is left queued when one cannot be."""

    def __init__(self, engine: Engine, jobs: Sequence[Job], *, truncate: int | None = None):
        self._queue: asyncio.Queue[tuple[int, Token | None]] = asyncio.Queue()
        self._results: list[asyncio.Future[GenerationResult]] = []
        try:
            for i, (inputs, params) in enumerate(jobs):
                result = engine.schedule(inputs, params, on_token=partial(self._put, i), truncate=truncate)
                result.add_done_callback(partial(self._finished, i))  # called after its last token
                self._results.append(result)
        except BaseException:
            self.cancel()
            raise

    def _put(self, choice: int, token: Token) -> None:
        self._queue.put_nowait((choice, token))

    def _finished(self, choice: int, _: asyncio.Future) -> None:
        self._queue.put_nowait((choice, None))

    async def __aiter__(self) -> AsyncIterator[tuple[int, Token | None]]:
        """(choice, token) as they come; (choice, None) once that choice has ended."""
        running = len(self._results)
        while running:
            choice, token = await self._queue.get()
            running -= token is None
            yield choice, token

    async def result(self, choice: int = 0) -> GenerationResult:
        return await self._results[choice]

    def cancel(self) -> None:
        for result in self._results:
            result.cancel()  # propagates to the engine: the sequence leaves the batch


async def gather(engine: Engine, jobs: Sequence[Job]) -> list[GenerationResult]:
    """The results of `jobs`, generated together; none left running when one fails."""
    futures: list[asyncio.Future[GenerationResult]] = []
    try:
        for inputs, params in jobs:
            futures.append(engine.schedule(inputs, params))
        return list(await asyncio.gather(*futures))
    finally:
        for future in futures:  # the others, when one could not be queued or failed
            future.cancel()


def error_json(exc: EngineError) -> dict[str, Any]:
    if isinstance(exc, InvalidRequest):
        return p.error_body(str(exc), "validation")
    if isinstance(exc, Overloaded):
        return p.error_body(str(exc), "overloaded")
    return p.error_body(str(exc), "generation")


def error_response(exc: EngineError) -> JSONResponse:
    status = 422 if isinstance(exc, InvalidRequest) else 429 if isinstance(exc, Overloaded) else 500
    headers = {"Retry-After": str(max(1, round(exc.retry_after)))} if isinstance(exc, Overloaded) else None
    return JSONResponse(error_json(exc), status_code=status, headers=headers)


def sse(data: dict[str, Any], *, event: str | None = None) -> str:
    head = f"event: {event}\n" if event else ""
    return f"{head}data:{json.dumps(data, separators=(',', ':'))}\n\n"
