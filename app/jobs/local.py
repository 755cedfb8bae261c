"""Jobs without Redis: kept in this process and run by it. Not durable: a restart loses
every job. Same API, same chunks, same runner as the Redis worker; the state that the
Lua scripts keep in Redis lives here in one record per job."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from llm_clients import LLMClient
from tasks import Registry

from ..config import JobsConfig
from .models import (ACTIVE, CANCELLED, COMPLETED, FAILED, PROGRESS_INTERVAL_MS, QUEUED, RUNNING, Chunk,
                     Event, Job, JobSpec, UnitResult, now_iso, now_ms)
from .queue import Submission
from .runner import JobRuntime, JobSetupError, error_units, run_chunk
from .store import EVENTS_BATCH, RESULTS_BATCH, dumps

log = logging.getLogger("synthserve.jobs")


@dataclass(eq=False)
class _Record:
    job: Job
    spec: JobSpec
    rows: list[dict[str, Any]]
    created_us: int
    results: dict[int, str] = field(default_factory=dict)
    done_units: set[int] = field(default_factory=set)
    checkpoints: dict[int, dict[str, Any]] = field(default_factory=dict)
    events: list[Event] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    running: set[asyncio.Task] = field(default_factory=set)
    rows_out: int = 0
    progress_ms: int = 0
    progress_count: int = 0
    ended_at: float | None = None  # monotonic, for result_ttl_s

    def emit(self, kind: str, index: int | None = None) -> None:
        seq = len(self.events) + 1
        if kind == "row":
            self.events.append(Event(seq, kind, index=index))
        else:
            self.events.append(Event(seq, kind, job=replace(self.job)))
            self.progress_count = self.job.completed + self.job.failed
        self.changed.set()
        self.changed = asyncio.Event()

    def progress(self, force: bool = False) -> None:
        stamp = now_ms()
        count = self.job.completed + self.job.failed
        if count != self.progress_count and (force or stamp - self.progress_ms >= PROGRESS_INTERVAL_MS):
            self.progress_ms = stamp
            self.emit("progress")

    def finish(self, status: str, error: str | None = None) -> None:
        self.job.status, self.job.finished_at = status, now_iso()
        if error:
            self.job.error = error
        self.emit("done")
        self.rows, self.checkpoints = [], {}
        self.ended_at = time.monotonic()


class LocalJobStore:
    durable = False

    def __init__(self, registry: Registry, backends: dict[str, LLMClient], config: JobsConfig):
        self.registry = registry
        self.backends = backends
        self.config = config
        self._jobs: dict[str, _Record] = {}
        self._queue: asyncio.Queue[tuple[_Record, list[int]]] = asyncio.Queue()
        self._tasks: list[asyncio.Task] = []
        limits = [c.policy.max_concurrency for c in backends.values()] or [16]
        self._capacity = config.worker_units or 2 * max(limits)
        self._units = 0
        self._room = asyncio.Event()

    async def start(self) -> None:
        self._tasks = [asyncio.create_task(self._dispatch(), name="jobs-local"),
                       asyncio.create_task(self._flush_progress(), name="jobs-local-progress")]

    async def aclose(self) -> None:
        for rec in self._jobs.values():
            for t in rec.running:
                t.cancel()
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, *(t for r in self._jobs.values() for t in r.running),
                             return_exceptions=True)

    async def queue_depth(self) -> int:
        """Chunks waiting for a slot (the metrics gauge)."""
        return self._queue.qsize()

    # ---- the API's side ----

    async def submit(self, sub: Submission) -> Job:
        rec = _Record(replace(sub.job), sub.spec, sub.rows if sub.spec.has_rows else [], sub.created_us)
        self._jobs[rec.job.id] = rec
        if rec.job.finished:
            rec.emit("done")
            rec.ended_at = time.monotonic()
        else:
            rec.emit("progress")
            for units in sub.chunks:
                self._queue.put_nowait((rec, units))
        return replace(rec.job)

    async def get(self, job_id: str) -> Job | None:
        self._expire()
        rec = self._jobs.get(job_id)
        return replace(rec.job) if rec else None

    async def list(self, owner: str | None, limit: int) -> list[Job]:
        self._expire()
        mine = [r for r in self._jobs.values() if r.job.owner == owner]
        mine.sort(key=lambda r: r.created_us, reverse=True)
        return [replace(r.job) for r in mine[:limit]]

    async def results(self, job: Job) -> AsyncIterator[list[tuple[int, str]]]:
        rec = self._jobs.get(job.id)
        if rec is None:
            return
        indexes = sorted(rec.results)
        for start in range(0, len(indexes), RESULTS_BATCH):
            yield [(i, rec.results[i]) for i in indexes[start:start + RESULTS_BATCH]]
            await asyncio.sleep(0)

    async def events(self, job: Job, after: int, wait_s: float) -> list[Event] | None:
        rec = self._jobs.get(job.id)
        if rec is None:
            return None
        if len(rec.events) <= after:
            try:
                await asyncio.wait_for(rec.changed.wait(), wait_s)
            except TimeoutError:
                pass
            if self._jobs.get(job.id) is not rec:
                return None
        return rec.events[after:after + EVENTS_BATCH]

    async def rows(self, job_id: str, indexes: Sequence[int]) -> list[str | None]:
        rec = self._jobs.get(job_id)
        return [rec.results.get(i) if rec else None for i in indexes]

    async def cancel(self, job_id: str) -> Job | None:
        rec = self._jobs.get(job_id)
        if rec is None:
            return None
        if rec.job.status in ACTIVE:
            self._stop(rec)
            rec.finish(CANCELLED)
        return replace(rec.job)

    async def delete(self, job: Job) -> None:
        rec = self._jobs.pop(job.id, None)
        if rec is not None:
            self._stop(rec)
            rec.changed.set()

    def _stop(self, rec: _Record) -> None:
        for t in rec.running:
            t.cancel()

    def _expire(self) -> None:
        cutoff = time.monotonic() - self.config.result_ttl_s
        for job_id in [j for j, r in self._jobs.items() if r.ended_at is not None and r.ended_at < cutoff]:
            del self._jobs[job_id]

    # ---- the in-process worker ----

    async def _dispatch(self) -> None:
        """Start chunks while fewer than `capacity` units are unfinished (as a worker does)."""
        while True:
            rec, units = await self._queue.get()
            while self._units >= self._capacity:
                self._room.clear()
                await self._room.wait()
            if rec.job.status not in ACTIVE or self._jobs.get(rec.job.id) is not rec:
                continue
            unfinished = set(units)
            self._units += len(unfinished)

            def release(done: set[int], unfinished: set[int] = unfinished) -> None:
                self._units -= len(unfinished & done)
                unfinished -= done
                self._room.set()

            def ended(task: asyncio.Task, rec: _Record = rec, release=release, units=units) -> None:
                rec.running.discard(task)
                release(set(units))

            task = asyncio.create_task(self._process(rec, units, release))
            rec.running.add(task)
            task.add_done_callback(ended)

    async def _process(self, rec: _Record, units: list[int], release: Callable[[set[int]], None]) -> None:
        try:
            rt = JobRuntime.resolve(rec.spec, self.registry, self.backends)
        except JobSetupError as exc:
            return rec.finish(FAILED, str(exc)) if rec.job.status in ACTIVE else None
        if rec.job.status == QUEUED:
            rec.job.status, rec.job.started_at, rec.progress_ms = RUNNING, now_iso(), now_ms()
            rec.emit("progress")
        rows = {u: rec.rows[u] for u in units if u < len(rec.rows)}
        last_error = ""
        for attempt in range(1, self.config.max_row_attempts + 1):
            todo = [u for u in units if u not in rec.done_units]
            if not todo or rec.job.status not in ACTIVE:
                return
            chunk = Chunk(rec.job.id, units, rows, {u: rec.checkpoints.get(u, {}) for u in units}, attempt)
            def on_unit(result: UnitResult) -> None:
                release({result.unit})
                self._save(rec, result)

            try:
                await run_chunk(rt, chunk, todo, on_unit, lambda unit, value: self._checkpoint(rec, unit, value),
                                isolate=attempt > 1)
                return
            except Exception as exc:
                log.exception("job %s: chunk %s failed (attempt %d)", rec.job.id, units[0], attempt)
                last_error = f"{type(exc).__name__}: {exc}"
        todo = [u for u in units if u not in rec.done_units]
        message = f"gave up after {self.config.max_row_attempts} attempts: {last_error}"
        if rec.spec.per_unit is None:
            rec.finish(FAILED, message)
        else:
            for result in error_units(rt, Chunk(rec.job.id, units, rows), todo, message):
                self._save(rec, result)

    def _checkpoint(self, rec: _Record, unit: int, value: str) -> None:
        rec.checkpoints[unit] = json.loads(value)

    def _save(self, rec: _Record, result: UnitResult) -> None:
        """What the SAVE script does in Redis."""
        job = rec.job
        if job.status not in ACTIVE:
            return
        if result.unit in rec.done_units:
            return
        rec.done_units.add(result.unit)
        job.input_tokens += result.usage[0]
        job.output_tokens += result.usage[1]
        if not rec.spec.whole:
            rec.checkpoints.pop(result.unit, None)
        for index, row in result.rows:
            if index is None:
                index, rec.rows_out = rec.rows_out, rec.rows_out + 1
            if index in rec.results:
                continue
            rec.results[index] = dumps(row)
            if row.get("error") is not None:
                job.failed += 1
            else:
                job.completed += 1
            rec.emit("row", index)
        if len(rec.done_units) >= rec.spec.units_total:
            if rec.spec.per_unit is None:
                job.total = job.completed + job.failed
            rec.finish(COMPLETED)
        else:
            rec.progress()

    async def _flush_progress(self) -> None:
        while True:
            await asyncio.sleep(PROGRESS_INTERVAL_MS / 1000)
            for rec in list(self._jobs.values()):
                if rec.job.status == RUNNING:
                    rec.progress()
