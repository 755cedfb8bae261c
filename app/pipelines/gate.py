"""Later steps first. Every row of a pipeline queues for the same backend slots (the
backend's CallPolicy, FIFO): a row that finished step 1 would wait behind every other
row's step-1 call before its step 2, and the first final row would come after nearly the
whole of step 1. A gate per backend in front of the policy, as wide as its
max_concurrency, hands a free slot to the waiting call of the latest step (then the
oldest): rows flow through to the end while the backend stays full.

A row also keeps its slot between its own calls (`Held`): a call that ends while its row's
next step calls the same backend hands its slot to that call rather than to the gate. The
next call comes a few milliseconds later (the step's bookkeeping, the next prompt rendered
off the loop); a slot released in between went to a newer row's first step, and the row
waited a whole latency more at every step.

The gate is the process's, per backend client, so every pipeline request and job of the
process shares it; calls of plain /tasks requests do not pass it (the policy below still
bounds everything)."""

from __future__ import annotations

import asyncio
import contextvars
import heapq
import itertools
import weakref
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from llm_clients import LLMClient

T = TypeVar("T")


class PriorityGate:
    def __init__(self, size: int):
        self.size = size
        self.in_use = 0
        self._waiting: list[tuple[int, int, asyncio.Future[None]]] = []
        self._order = itertools.count()

    async def run(self, priority: int, call: Callable[[], Awaitable[T]]) -> T:
        """`call()` once a slot is free (or with the slot its row holds); higher `priority`
        goes first."""
        held = _HELD.get()
        if held is not None and held.take(self):
            pass  # the row's own slot, still counted in in_use
        elif self.in_use < self.size and not self._waiting:
            self.in_use += 1
        else:
            future = asyncio.get_running_loop().create_future()
            heapq.heappush(self._waiting, (-priority, next(self._order), future))
            try:
                await future  # the slot is handed over already counted
            except asyncio.CancelledError:
                if future.done() and not future.cancelled():
                    self._release()  # granted just as we were cancelled: pass it on
                raise
        try:
            return await call()
        finally:
            if held is None or not held.keep_slot(self):
                self._release()

    def _release(self) -> None:
        while self._waiting:
            _, _, future = heapq.heappop(self._waiting)
            if not future.done():
                future.set_result(None)  # in_use stays: the slot changes hands
                return
        self.in_use -= 1


class Held:
    """The slots one row keeps between its calls: at most one per gate, and only for the
    gates its next step calls (`keep`, set by the executor before each step)."""

    def __init__(self) -> None:
        self.keep: frozenset[PriorityGate] = frozenset()
        self._slots: set[PriorityGate] = set()

    def take(self, gate: PriorityGate) -> bool:
        if gate in self._slots:
            self._slots.discard(gate)
            return True
        return False

    def keep_slot(self, gate: PriorityGate) -> bool:
        if gate in self.keep and gate not in self._slots:
            self._slots.add(gate)
            return True
        return False

    def release(self) -> None:
        """Hand every kept slot back (the row is done, dropped or fans out)."""
        for gate in self._slots:
            gate._release()
        self._slots.clear()


_HELD: contextvars.ContextVar[Held | None] = contextvars.ContextVar("held", default=None)


def holding(held: Held) -> contextvars.Token[Held | None]:
    """Calls from here on (this asyncio task and those it starts) are `held`'s row's."""
    return _HELD.set(held)


def release_holding(token: contextvars.Token[Held | None]) -> None:
    held = _HELD.get()
    if held is not None:
        held.release()
    _HELD.reset(token)


_gates: weakref.WeakKeyDictionary[LLMClient, PriorityGate] = weakref.WeakKeyDictionary()


def gate_of(llm: LLMClient) -> PriorityGate:
    gate = _gates.get(llm)
    if gate is None:
        gate = _gates[llm] = PriorityGate(llm.policy.max_concurrency)
    return gate


class GatedClient:
    """`llm` (a backend's client, or a request's or job's CachedClient on it) whose calls
    pass the backend's gate at `priority` (the step's position); everything else is the
    wrapped client's."""

    def __init__(self, llm: Any, priority: int, backend: LLMClient):
        self._llm = llm
        self.gate = gate_of(backend)
        self._priority = priority

    def __getattr__(self, name: str) -> Any:
        return getattr(self._llm, name)

    async def chat(self, *args: Any, **kwargs: Any) -> Any:
        return await self.gate.run(self._priority, lambda: self._llm.chat(*args, **kwargs))

    async def stream_chat(self, *args: Any, **kwargs: Any) -> Any:
        return await self.gate.run(self._priority, lambda: self._llm.stream_chat(*args, **kwargs))

    async def complete(self, *args: Any, **kwargs: Any) -> Any:
        return await self.gate.run(self._priority, lambda: self._llm.complete(*args, **kwargs))

    async def embed(self, *args: Any, **kwargs: Any) -> Any:
        return await self.gate.run(self._priority, lambda: self._llm.embed(*args, **kwargs))
