"""The shared call policy: a per-backend concurrency limit (fixed, or adaptive: see
adaptive.py), an optional rate limit shared through Redis (ratelimit.py), a timeout per
attempt, and retries with exponential backoff and full jitter that honour Retry-After and
the x-ratelimit-* headers of OpenAI and Mistral.

Providers translate their SDK's errors into TransientError (worth retrying) or LLMError
(final) and never retry themselves.
"""

from __future__ import annotations

import asyncio
import contextvars
import random
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

from .adaptive import AdaptiveLimit, Slots

T = TypeVar("T")

RETRYABLE_STATUS = frozenset({408, 409, 429})


class LLMError(Exception):
    """A call failed for good (after retries, or not retryable). Marks its own row."""


class TransientError(LLMError):
    """A call failed in a way worth retrying: connection error, timeout, 408/409/429/5xx."""

    def __init__(self, message: str, *, retry_after: float | None = None, status: int | None = None,
                 quota_reset: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after
        self.status = status
        # x-ratelimit-remaining-* at 0: every call to the backend waits this long, not just this one
        self.quota_reset = quota_reset

    @property
    def overload(self) -> bool:
        """The backend says it is overloaded (429): the adaptive limit backs off."""
        return self.status == 429


def is_retryable_status(status: int) -> bool:
    return status in RETRYABLE_STATUS or status >= 500


def parse_retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None  # an HTTP date: rare from LLM APIs, fall back to backoff


_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(value: str | None) -> float | None:
    """OpenAI's x-ratelimit-reset-* ("1s", "6m0s", "20ms", "1.5s"), or plain seconds."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    parts = _DURATION.findall(value)
    return sum(float(n) * _UNIT_S[unit] for n, unit in parts) if parts else None


def quota_reset(headers: Mapping[str, str]) -> float | None:
    """Seconds until the spent quota refills, when x-ratelimit-remaining-requests or
    -tokens says none is left (OpenAI's and Mistral's headers); else None."""
    waits = []
    for kind in ("requests", "tokens"):
        remaining = headers.get(f"x-ratelimit-remaining-{kind}")
        if remaining is not None and remaining.strip() in ("0", "0.0"):
            waits.append(parse_duration(headers.get(f"x-ratelimit-reset-{kind}")) or 1.0)
    return max(waits) if waits else None


def transient_status_error(status: int, text: str, headers: Mapping[str, str] | None) -> TransientError:
    headers = headers or {}
    reset = quota_reset(headers) if status == 429 else None
    retry_after = parse_retry_after(headers.get("retry-after") or headers.get("Retry-After"))
    return TransientError(text, retry_after=retry_after if retry_after is not None else reset,
                          status=status, quota_reset=reset)


# A check each attempt passes once it holds its slot, just before it goes out (a job's budget:
# app.spend.JobBudget); set around a call by llm_clients.cache.CachedClient. It raises LLMError
# to stop the call.
CALL_GATE: contextvars.ContextVar[Callable[[], Awaitable[None]] | None] = contextvars.ContextVar(
    "call_gate", default=None)


class CallPolicy:
    """Shared by every call to one backend. A slot is held only while a request is in
    flight, not during backoff, so a backend that rate-limits us does not idle the slot.

    `rate` (ratelimit.RateLimiter, set by the app once Redis is open) is taken per attempt,
    before the slot: `tokens` is the call's estimate (input + max_new_tokens)."""

    def __init__(self, max_concurrency: int, *, max_retries: int = 3, timeout_s: float = 120.0,
                 backoff_base_s: float = 0.5, backoff_max_s: float = 30.0, adaptive: bool = False):
        self.max_concurrency = max_concurrency
        self.max_retries = max_retries
        self.timeout_s = timeout_s
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s
        self.slots = Slots(max_concurrency)
        self.adaptive = AdaptiveLimit(self.slots, max_concurrency) if adaptive else None
        self.rate: Any = None
        self.paused_until = 0.0  # time.monotonic() before which no attempt starts (quota spent)
        self.retries = 0  # counters read by metrics
        self.throttled = 0  # attempts answered 429
        # metrics hook (app.metrics): observer(seconds, result) once per call, result None if it failed
        self.observer: Callable[[float, object], None] | None = None

    @property
    def in_flight(self) -> int:
        return self.slots.in_use

    @property
    def limit(self) -> int:
        """The in-flight limit now (moves with `adaptive`)."""
        return self.slots.limit

    async def run(self, attempt: Callable[[], Awaitable[T]], *,
                  retry_if: Callable[[], bool] = lambda: True, tokens: int = 0) -> T:
        if self.observer is None:
            return await self._run(attempt, retry_if, tokens)
        started = time.perf_counter()
        try:
            result = await self._run(attempt, retry_if, tokens)
        except LLMError:
            self.observer(time.perf_counter() - started, None)
            raise
        self.observer(time.perf_counter() - started, result)
        return result

    async def _run(self, attempt: Callable[[], Awaitable[T]], retry_if: Callable[[], bool], tokens: int) -> T:
        for n in range(self.max_retries + 1):
            if self.paused_until and (pause := self.paused_until - time.monotonic()) > 0:
                await asyncio.sleep(pause)
            if self.rate is not None:
                await self.rate.acquire(tokens)
            try:
                # an overload is judged by when the call got its slot, not when it began to wait
                started = await self.slots.acquire()
                try:
                    if (gate := CALL_GATE.get()) is not None:
                        await gate()
                    async with asyncio.timeout(self.timeout_s):
                        result = await attempt()
                finally:
                    in_flight = self.slots.in_use  # this call included (release may hand its slot on)
                    self.slots.release()
                if self.adaptive is not None:
                    self.adaptive.on_success()
                return result
            except TimeoutError as exc:
                error: TransientError = TransientError(f"timed out after {self.timeout_s:g}s")
                error.__cause__ = exc
                if self.adaptive is not None:
                    self.adaptive.on_overload(started, in_flight)
            except TransientError as exc:
                error = exc
                if exc.overload:
                    self._overloaded(exc, started, in_flight)
            if n == self.max_retries or not retry_if():
                raise LLMError(f"{error} (after {n + 1} attempt{'s' if n else ''})") from error
            self.retries += 1
            await asyncio.sleep(self._delay(n, error.retry_after))
        raise AssertionError("unreachable")

    def _overloaded(self, error: TransientError, started: float, in_flight: int) -> None:
        self.throttled += 1
        if self.adaptive is not None:
            self.adaptive.on_overload(started, in_flight)
        if error.quota_reset:
            self.paused_until = max(self.paused_until, time.monotonic() + min(error.quota_reset, self.backoff_max_s))

    def _delay(self, n: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(retry_after, self.backoff_max_s)
        return random.uniform(0, min(self.backoff_max_s, self.backoff_base_s * 2 ** n))
