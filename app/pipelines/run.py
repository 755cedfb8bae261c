"""One request's run: every input row's tree through the executor, `window` lanes each
taking the next input row when its last one is done (the backends' gates keep the
backends full and let later steps go first), final rows handed out as they finish,
counters per step kept as rows leave each step."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

from llm_clients import LLMClient, Usage

from .check import Plan, TaskPlan
from .execute import Executor, Item, Outcome, add_counts, all_or_none, empty_counts
from .gate import GatedClient

MIN_WINDOW = 8
_END = object()


def sort_key(row_id: str) -> tuple[int, ...]:
    """Ids sort numerically, part by part: "2" < "2.1" < "2.10" < "10"."""
    return tuple(int(p) for p in row_id.split("."))


def clients(plan: Plan, wrap: Callable[[LLMClient, int], LLMClient]) -> dict[int, list[LLMClient]]:
    """Each task step's clients: `wrap(backend client, step position)`."""
    return {k: [wrap(call.llm, k) for call in p.calls] for k, p in enumerate(plan.steps) if isinstance(p, TaskPlan)}


def gated(client_of: Callable[[LLMClient], Any]) -> Callable[[LLMClient, int], Any]:
    """A `wrap` for `clients`: one client per backend for the whole run (`client_of(backend)`:
    a request's or job's CachedClient, whose numbering of identical calls then spans every
    step), behind the backend's gate at each step's priority."""
    made: dict[int, Any] = {}

    def wrap(llm: LLMClient, k: int) -> Any:
        if id(llm) not in made:
            made[id(llm)] = client_of(llm)
        return GatedClient(made[id(llm)], k, llm)

    return wrap


def window(plan: Plan) -> int:
    """Input rows in flight: twice the widest backend's limit, so that a row is waiting for
    every slot while others move between calls. Rows waiting for their first step do not
    delay the first final rows: the gate gives each freed slot to a later step's call as
    soon as one waits, and the calls of a step finish spread out, not all at once."""
    limits = [call.llm.policy.max_concurrency for p in plan.steps if isinstance(p, TaskPlan) for call in p.calls]
    return max(MIN_WINDOW, 2 * max(limits, default=MIN_WINDOW))


class PipelineRun:
    def __init__(self, executor: Executor, rows: list[dict[str, Any]]):
        self.executor = executor
        self.rows = rows
        self.steps: dict[str, dict[str, Any]] = {p.step.name: empty_counts() for p in executor.plan.steps}
        self.usage = Usage()
        self.count = self.failed = self.filtered = 0
        self.version = 0  # bumped whenever a counter moves (step events are sent on change)

    async def stream(self) -> AsyncIterator[dict[str, Any]]:
        """Final rows as they finish. Cancelling the iteration cancels every pending call."""
        queue: asyncio.Queue[Any] = asyncio.Queue()
        todo = iter(enumerate(self.rows))  # shared by the lanes: each takes the next row when it is free

        async def stepped(item: Item, outcome: Outcome) -> None:
            counts = outcome.counts()
            add_counts(self.steps[self.executor.plan.steps[item.step].step.name], counts)
            self.filtered += counts["filtered"]
            self.usage = self.usage + outcome.usage
            self.version += 1

        def final(item: Item) -> None:
            self.count += 1
            self.failed += item.error is not None
            queue.put_nowait(item.final())

        async def lane() -> None:
            for i, row in todo:
                await self.executor.walk(Item(str(i), row), stepped, final)

        async def everything() -> None:
            try:
                await all_or_none(lane() for _ in range(min(window(self.executor.plan), len(self.rows))))
                queue.put_nowait(_END)
            except Exception as exc:  # a bug, not a row failure: fail the request, don't hang it
                queue.put_nowait(exc)

        runner = asyncio.create_task(everything())
        try:
            while (got := await queue.get()) is not _END:
                if isinstance(got, Exception):
                    raise got
                yield got
        finally:
            runner.cancel()
            await asyncio.gather(runner, return_exceptions=True)
