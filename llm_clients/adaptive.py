"""The in-flight limit of one backend: a semaphore whose size may change while calls wait
on it (Slots), and the controller that moves it with what the backend answers
(AdaptiveLimit, for `adaptive = true`).

AdaptiveLimit is additive-increase / multiplicative-decrease, as TCP congestion control:
halved on a 429 or a timeout, +1 per window of successes, between 1 and max_concurrency.
A plain sawtooth between L/2 and L runs at 3/4 of the ceiling L on average, so the window
depends on where the limit stands against the level the backend last took (the calls in
flight beside the one refused): below it, one success (the limit doubles per round trip
back to where it was safe, as TCP's slow start); at or above it, 32 x limit successes (the
ceiling is probed rarely, so few calls are refused). A call that got its slot before the
last decrease does not decrease again: one burst of 429s is one halving, and its refusals
only bring that level down.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque


class Slots:
    """A FIFO counting semaphore with a settable limit. `waiting` counts the calls queued
    for a slot (the back-pressure depth)."""

    __slots__ = ("limit", "in_use", "waiting", "_waiters")

    def __init__(self, limit: int):
        self.limit = limit
        self.in_use = 0
        self.waiting = 0
        self._waiters: deque[asyncio.Future[float]] = deque()

    async def acquire(self) -> float:
        """Wait for a slot; returns when it was granted (time.monotonic()), which may be a
        loop turn before this coroutine resumes."""
        if self.in_use < self.limit and not self.waiting:
            self.in_use += 1
            return time.monotonic()
        future: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self._waiters.append(future)
        self.waiting += 1
        try:
            return await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self.release()  # granted just as we were cancelled: hand it on
            else:
                future.cancel()  # left in the deque; _wake skips it
                self.waiting -= 1
            raise

    def release(self) -> None:
        self.in_use -= 1
        self._wake()

    def resize(self, limit: int) -> None:
        self.limit = limit
        self._wake()

    def _wake(self) -> None:
        now = time.monotonic()
        while self._waiters and self.in_use < self.limit:
            future = self._waiters.popleft()
            if not future.done():
                self.in_use += 1
                self.waiting -= 1
                future.set_result(now)


class AdaptiveLimit:
    """Moves `slots.limit` between 1 and `maximum` (see the module's docstring)."""

    def __init__(self, slots: Slots, maximum: int):
        self.slots = slots
        self.maximum = maximum
        self.safe = maximum  # calls in flight besides the one refused, at the last overload
        self.successes = 0
        self.last_decrease = float("-inf")

    def on_success(self) -> None:
        limit = self.slots.limit
        if limit >= self.maximum:
            return
        self.successes += 1
        window = 32 * limit if limit >= self.safe else 1
        if self.successes >= window:
            self.successes = 0
            self.slots.resize(limit + 1)

    def on_overload(self, started: float, in_flight: int) -> None:
        """A 429 or a timeout of a call that got its slot at `started` (time.monotonic()),
        with `in_flight` calls in flight, itself included, when it ended."""
        if started < self.last_decrease:
            # the same burst, already answered by one halving. Refusals come back at once
            # while accepted calls take a whole latency, so the first refusal saw the
            # calls about to be refused in flight too: the fewest in flight at any refusal
            # of the burst is what the backend took (at 128 in flight against a ceiling of
            # 32, the first says 127 and the last 32)
            self.safe = max(1, min(self.safe, in_flight - 1))
            return
        self.last_decrease = time.monotonic()
        # the others in flight then went through: the backend takes about that many, whatever
        # the limit had been cut to meanwhile
        self.safe = max(1, in_flight - 1)
        self.successes = 0
        self.slots.resize(max(1, self.slots.limit // 2))
