"""The worker's batched path to Redis: finished units and checkpoints collected for a few
milliseconds, then written in one pipeline (one SAVE script per chunk), so a worker
finishing hundreds of rows a second makes tens of round trips, not hundreds. Order is
kept: a chunk's acknowledging save goes after all its rows."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from redis import exceptions as redis_errors

from .keys import ACTIVE
from .store import JobStore, SaveOp

log = logging.getLogger("synthserve.jobs")


class Writer:
    def __init__(self, store: JobStore, *, on_inactive: Callable[[str, str], None],
                 interval_s: float = 0.05):
        self.store = store
        self.on_inactive = on_inactive  # (job id, status) for a job that is no longer running
        self.interval_s = interval_s
        self._ops: list[tuple[SaveOp, asyncio.Future[str] | None]] = []
        self._checkpoints: list[tuple[str, int, str, int, asyncio.Future[None]]] = []
        self._wake = asyncio.Event()
        self._urgent = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task | None = None

    def start(self, on_failure: Callable[[BaseException], None]) -> None:
        """Run the writer; `on_failure` hears of a bug that stopped it (nothing is stored
        any more: the worker must stop, its chunks go to other workers)."""
        self._task = asyncio.create_task(self._loop(), name="jobs-writer")

        def done(task: asyncio.Task) -> None:
            if not task.cancelled() and (exc := task.exception()) is not None:
                on_failure(exc)

        self._task.add_done_callback(done)

    def checkpoint(self, job_id: str, unit: int, value: str, run: int) -> asyncio.Future[None]:
        """Queue a unit's step answers (of the job's run `run`); written at once (the task
        waits for it before its next call), with whatever else is queued."""
        future = asyncio.get_running_loop().create_future()
        self._checkpoints.append((job_id, unit, value, run, future))
        self._urgent.set()
        self._wake.set()
        return future

    def save(self, op: SaveOp) -> asyncio.Future[str]:
        """Queue finished units; the future gives the job's status once they are stored."""
        future = asyncio.get_running_loop().create_future()
        self._ops.append((op, future))
        self._wake.set()
        return future

    async def close(self) -> None:
        """Write what is queued, then stop."""
        self._closing = True
        self._wake.set()
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)

    async def _loop(self) -> None:
        while True:
            await self._wake.wait()
            if not self._closing and not self._urgent.is_set():
                try:  # rows wait a little, to go in bigger batches; a checkpoint cuts it short
                    await asyncio.wait_for(self._urgent.wait(), self.interval_s)
                except TimeoutError:
                    pass
            self._wake.clear()
            self._urgent.clear()
            ops, self._ops = self._ops, []
            checkpoints, self._checkpoints = self._checkpoints, []
            if ops or checkpoints:
                merged, waiters = merge(ops)
                waiters.append([future for *_, future in checkpoints])
                statuses = await self._store(merged, [c[:4] for c in checkpoints], waiters)
                for future in waiters.pop():
                    if not future.done():
                        future.set_result(None)
                for op, status, futures in zip(merged, statuses, waiters):
                    for future in futures:
                        if not future.done():
                            future.set_result(status)
                    if status not in ACTIVE:
                        self.on_inactive(op.job_id, status)
            if self._closing and not self._ops and not self._checkpoints:
                return

    async def _store(self, ops: list[SaveOp], checkpoints: list[tuple[str, int, str, int]],
                     waiters: list[list[asyncio.Future]]) -> list[str]:
        """Write, retrying while Redis is unreachable (the rows are paid for); any other
        error fails the chunks waiting on it (they are retried like a failed chunk)."""
        failures = 0
        while True:
            try:
                return await self.store.save(ops, checkpoints)
            except (redis_errors.ConnectionError, redis_errors.TimeoutError) as exc:
                failures += 1
                if not self._closing or failures < 5:
                    log.warning("saving results failed (%s), retrying", exc)
                    await asyncio.sleep(min(5.0, 0.1 * 2 ** failures))
                    continue
                error: Exception = exc
            except redis_errors.RedisError as exc:
                log.error("saving results failed: %s", exc)
                error = exc
            for futures in waiters:
                for future in futures:
                    if not future.done():
                        future.set_exception(error)
            return []


def merge(ops: list[tuple[SaveOp, asyncio.Future | None]]) -> tuple[list[SaveOp], list[list[asyncio.Future]]]:
    """One SaveOp per (job, chunk), in first-seen order."""
    merged: dict[tuple[str, str], SaveOp] = {}
    waiters: dict[tuple[str, str], list[asyncio.Future]] = {}
    for op, future in ops:
        key = (op.job_id, op.entry)
        if key in merged:
            m = merged[key]
            m.units.extend(op.units)
            m.ack = m.ack or op.ack
        else:
            merged[key] = SaveOp(op.job_id, op.entry, list(op.units), op.ack, op.drop_checkpoints, op.run)
            waiters[key] = []
        if future is not None:
            waiters[key].append(future)
    return list(merged.values()), list(waiters.values())
