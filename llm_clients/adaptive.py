"""The in-flight limit of one backend: a semaphore whose size may change while calls wait
on it (Slots), and the controller that moves it with what the backend answers
(AdaptiveLimit, for `adaptive = true`).

AdaptiveLimit is additive-increase / multiplicative-decrease, as TCP congestion control:
halved on a 429 or a timeout, +1 per window of successes, between 1 and max_concurrency.
A plain sawtooth between L/2 and L runs at 3/4 of the ceiling L on average, so the window
is short (limit/4 successes) while the limit is below the level where the last 429 came
(back where it was safe within a few round trips) and long (8 x limit) at that level (the
ceiling is probed rarely, so few calls are refused). A call that began before the last
decrease does not decrease again: one burst of 429s is one halving.
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
        self._waiters: deque[asyncio.Future[None]] = deque()

    async def acquire(self) -> None:
        if self.in_use < self.limit and not self.waiting:
            self.in_use += 1
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(future)
        self.waiting += 1
        try:
            await future
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
        while self._waiters and self.in_use < self.limit:
            future = self._waiters.popleft()
            if not future.done():
                self.in_use += 1
                self.waiting -= 1
                future.set_result(None)


class AdaptiveLimit:
    """Moves `slots.limit` between 1 and `maximum` (see the module's docstring)."""

    def __init__(self, slots: Slots, maximum: int):
        self.slots = slots
        self.maximum = maximum
        self.ceiling = maximum + 1  # the limit at which the last overload came
        self.successes = 0
        self.last_decrease = float("-inf")

    def on_success(self) -> None:
        limit = self.slots.limit
        if limit >= self.maximum:
            return
        self.successes += 1
        window = 8 * limit if limit >= self.ceiling - 1 else max(1, limit // 4)
        if self.successes >= window:
            self.successes = 0
            self.slots.resize(limit + 1)

    def on_overload(self, started: float) -> None:
        """A 429 or a timeout of a call that began at `started` (time.monotonic())."""
        if started < self.last_decrease:
            return
        self.last_decrease = time.monotonic()
        self.ceiling = self.slots.limit
        self.successes = 0
        self.slots.resize(max(1, self.slots.limit // 2))
