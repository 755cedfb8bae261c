"""The shared call policy: a per-backend concurrency limit, a timeout per attempt, and
retries with exponential backoff and full jitter that honour Retry-After.

Providers translate their SDK's errors into TransientError (worth retrying) or LLMError
(final) and never retry themselves.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")

RETRYABLE_STATUS = frozenset({408, 409, 429})


class LLMError(Exception):
    """A call failed for good (after retries, or not retryable). Marks its own row."""


class TransientError(LLMError):
    """A call failed in a way worth retrying: connection error, timeout, 408/409/429/5xx."""

    def __init__(self, message: str, *, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


def is_retryable_status(status: int) -> bool:
    return status in RETRYABLE_STATUS or status >= 500


def parse_retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None  # an HTTP date: rare from LLM APIs, fall back to backoff


class CallPolicy:
    """Shared by every call to one backend. The semaphore is held only while a request is
    in flight, not during backoff, so a backend that rate-limits us does not idle the slot."""

    def __init__(self, max_concurrency: int, *, max_retries: int = 3, timeout_s: float = 120.0,
                 backoff_base_s: float = 0.5, backoff_max_s: float = 30.0):
        self.max_concurrency = max_concurrency
        self.max_retries = max_retries
        self.timeout_s = timeout_s
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s
        self._slots = asyncio.Semaphore(max_concurrency)
        self.in_flight = 0
        self.retries = 0  # counters read by metrics
        # metrics hook (app.metrics): observer(seconds, result) once per call, result None if it failed
        self.observer: Callable[[float, object], None] | None = None

    async def run(self, attempt: Callable[[], Awaitable[T]], *,
                  retry_if: Callable[[], bool] = lambda: True) -> T:
        if self.observer is None:
            return await self._run(attempt, retry_if)
        started = time.perf_counter()
        try:
            result = await self._run(attempt, retry_if)
        except LLMError:
            self.observer(time.perf_counter() - started, None)
            raise
        self.observer(time.perf_counter() - started, result)
        return result

    async def _run(self, attempt: Callable[[], Awaitable[T]], retry_if: Callable[[], bool]) -> T:
        for n in range(self.max_retries + 1):
            try:
                async with self._slots:
                    self.in_flight += 1
                    try:
                        async with asyncio.timeout(self.timeout_s):
                            return await attempt()
                    finally:
                        self.in_flight -= 1
            except TimeoutError as exc:
                error: TransientError = TransientError(f"timed out after {self.timeout_s:g}s")
                error.__cause__ = exc
            except TransientError as exc:
                error = exc
            if n == self.max_retries or not retry_if():
                raise LLMError(f"{error} (after {n + 1} attempt{'s' if n else ''})") from error
            self.retries += 1
            await asyncio.sleep(self._delay(n, error.retry_after))
        raise AssertionError("unreachable")

    def _delay(self, n: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(retry_after, self.backoff_max_s)
        return random.uniform(0, min(self.backoff_max_s, self.backoff_base_s * 2 ** n))
