"""The one producer -> queue -> consumer pattern of the code base: run a coroutine that
emits items while the caller iterates over them as they come (Task.stream over its units,
the evol generators' rounds, the SSE events of a /tasks request)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")

Emit = Callable[[T], None]


async def produced(produce: Callable[[Emit[T]], Awaitable[None]]) -> AsyncIterator[T]:
    """The items `produce(emit)` emits, as it emits them, until it returns. What it raises
    is raised here, after the items it emitted before (a TaskGroup's first exception,
    unwrapped: a bug fails the request, it does not hang it). Leaving the iteration early
    cancels the producer, and with it whatever it awaits (the LLM calls)."""
    queue: asyncio.Queue[tuple[T] | BaseException | None] = asyncio.Queue()

    async def run() -> None:
        try:
            await produce(lambda item: queue.put_nowait((item,)))
        except Exception as exc:
            while isinstance(exc, ExceptionGroup):
                exc = exc.exceptions[0]
            queue.put_nowait(exc)
            return
        queue.put_nowait(None)

    producer = asyncio.create_task(run())
    try:
        while (got := await queue.get()) is not None:
            if isinstance(got, BaseException):
                raise got
            yield got[0]
    finally:
        producer.cancel()
        await asyncio.gather(producer, return_exceptions=True)
