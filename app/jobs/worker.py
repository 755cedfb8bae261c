"""The consumer: the API process's own in the default set-up, and `synthserve worker`
(standalone.py).

A worker reads chunks from the queue stream through the consumer group, keeps about
`capacity` units in flight (twice the largest backend limit by default; the backends'
CallPolicy bounds the actual calls), and stores each finished unit through the Writer.
A chunk's entry is acknowledged by the same script that stores its last rows.

Liveness (claims.py): every claim_idle_ms/4 the worker touches the entries it holds;
entries idle longer than claim_idle_ms belong to a dead worker and are taken over, their
delivery count being the attempt number. A worker that finds one of its entries taken
over drops it; rows are stored once whichever worker finishes first. Cancel and delete reach the
worker by pub/sub, and by polling the statuses of its jobs every half second.

SIGINT/SIGTERM: stop claiming, let in-flight chunks finish for `shutdown_grace_s`, then
cancel the rest, store what finished and mark their entries idle so that another
worker takes them over at once. A second signal skips the grace period.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any
from secrets import token_hex

from redis.exceptions import RedisError, ResponseError

from llm_clients import LLMClient
from tasks import Registry

from ..config import JobsConfig
from ..spend import Spend
from . import keys
from .claims import Claims
from .keys import ACTIVE, Entry, JobStatus
from .models import Chunk, UnitResult
from . import pipelines
from .runner import JobRuntime, JobSetupError
from .store import Begun, JobStore, SaveOp
from .writer import Writer

log = logging.getLogger("synthserve.jobs")

READ_BLOCK_MS = 500
RUNTIME_CACHE = 256
CLOSED_CACHE = 4096


@dataclass(slots=True)
class InFlight:
    entry: str
    job_id: str
    units: list[int]
    rows: dict[int, dict] = field(default_factory=dict)
    unfinished: int = 0  # units not finished yet: what the chunk counts against the capacity
    task: asyncio.Task | None = None
    reason: str = "shutdown"  # why it was cancelled: shutdown | job (cancelled/deleted) | lost (taken over)
    run: int = 0  # the job's run the chunk belongs to (Entry.RUN)


@dataclass
class Worker:
    store: JobStore
    registry: Registry
    backends: dict[str, LLMClient]
    config: JobsConfig
    name: str = field(default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}-{token_hex(3)}")
    on_rows: Callable[[str, int, int], None] | None = None  # (task, rows, failed) per unit run: metrics
    spend: Spend | None = None  # the call cache and budgets (app.spend); None: calls go straight out

    def __post_init__(self) -> None:
        self.redis = self.store.redis
        limits = [c.policy.max_concurrency for c in self.backends.values()] or [16]
        self.capacity = self.config.worker_units or 2 * max(limits)
        self.claim_idle_ms = self.config.claim_idle_ms
        self.claims = Claims(self.redis, self.name, self.claim_idle_ms)
        self._in_flight: dict[str, InFlight] = {}
        self._units = 0
        self._room = asyncio.Event()
        self._stopping = asyncio.Event()
        self._helpers_end = False  # the heartbeat and the cancel listener stop looping
        self._runtimes: OrderedDict[str, JobRuntime] = OrderedDict()
        self._loading: dict[str, asyncio.Future[JobRuntime | None]] = {}
        self._closed: OrderedDict[str, None] = OrderedDict()  # jobs seen cancelled, deleted or ended
        self._dirty: set[str] = set()  # jobs with rows stored since the last progress flush
        self.writer = Writer(self.store, on_inactive=lambda job_id, status: self.drop_job(job_id))
        self.grace_s = self.config.shutdown_grace_s

    # ---- lifecycle ----

    def stop(self, *, now: bool = False) -> None:
        if now:
            self.grace_s = 0
        self._stopping.set()
        self._room.set()

    async def run(self) -> None:
        await self.claims.ensure_group()
        self.writer.start(on_failure=self._writer_failed)
        helpers = [asyncio.create_task(self._heartbeat(), name="jobs-heartbeat"),
                   asyncio.create_task(self._listen_cancel(), name="jobs-cancel")]
        log.info("worker %s consuming %s (capacity %d units)", self.name, keys.QUEUE, self.capacity)
        try:
            await self._consume()
        finally:
            await self._shutdown(helpers)

    @contextlib.asynccontextmanager
    async def serving(self) -> AsyncIterator[Worker]:
        """Run in the background (the API process's own worker); on exit stop as on SIGTERM."""
        task = asyncio.create_task(self.run(), name=f"worker-{self.name}")
        try:
            yield self
        finally:
            self.stop()
            await asyncio.gather(task, return_exceptions=True)

    async def _shutdown(self, helpers: list[asyncio.Task]) -> None:
        running = [f.task for f in self._in_flight.values() if f.task is not None]
        if running and self.grace_s > 0:
            log.info("worker %s: finishing %d chunks (up to %gs)", self.name, len(running), self.grace_s)
            stop_now = asyncio.create_task(self._wait_second_signal())
            await _wait_or(running, stop_now, self.grace_s)
            stop_now.cancel()
        left = list(self._in_flight.values())
        for f in left:
            if f.task is not None:
                f.reason = "shutdown"
                f.task.cancel()
        await asyncio.gather(*(f.task for f in left if f.task is not None), return_exceptions=True)
        await self.writer.close()
        # (and are cancelled: a cancel that lands inside a redis-py call can be lost there,
        # seen under uvloop, so their loops also end on this flag)
        self._helpers_end = True
        for h in helpers:
            h.cancel()
        await asyncio.gather(*helpers, return_exceptions=True)
        released = [f.entry for f in left]
        try:
            if released:
                await self.claims.release(released)
                log.info("worker %s: released %d chunks", self.name, len(released))
            else:
                await self.claims.retire()
        except RedisError as exc:  # the entries go back after claim_idle_ms anyway
            log.warning("worker %s: could not release its chunks: %s", self.name, exc)
        log.info("worker %s stopped", self.name)

    def _writer_failed(self, exc: BaseException) -> None:
        log.critical("worker %s: the result writer stopped, so does the worker", self.name,
                     exc_info=(type(exc), exc, exc.__traceback__))
        self.stop(now=True)

    async def _wait_second_signal(self) -> None:
        while self.grace_s > 0:
            await asyncio.sleep(0.1)

    # ---- claiming ----

    async def _consume(self) -> None:
        last_reclaim = 0.0
        reclaim_every = min(1.0, self.claim_idle_ms / 2000)
        chunk = max(1, self.config.chunk_units)
        while not self._stopping.is_set():
            room = self.capacity - self._units
            # while half the capacity is still busy, wait for room for two chunks: reads of
            # two entries at a time cost half as much, and the backend has work meanwhile
            if room <= 0 or (room < 2 * chunk and self._units >= self.capacity // 2):
                self._room.clear()
                try:
                    await asyncio.wait_for(self._room.wait(), timeout=reclaim_every)
                except TimeoutError:
                    pass
                continue
            free = max(1, room // chunk)
            try:
                claimed = []
                if time.monotonic() - last_reclaim >= reclaim_every:  # dead workers' chunks first
                    last_reclaim = time.monotonic()
                    claimed = await self.claims.reclaim(free)
                    if claimed:
                        log.info("worker %s took over %d chunks", self.name, len(claimed))
                if not claimed:
                    claimed = await self.claims.read(free, READ_BLOCK_MS)
            except ResponseError as exc:
                if "NOGROUP" in str(exc):  # the stream was deleted (FLUSHALL)
                    await self.claims.ensure_group()
                    continue
                raise
            except (RedisError, OSError) as exc:
                log.warning("worker %s: reading the queue failed: %s", self.name, exc)
                await asyncio.sleep(1.0)
                continue
            for entry, fields, attempt in claimed:
                self._spawn(entry, fields, attempt)

    def _spawn(self, entry: str, fields: dict[str, str], attempt: int) -> None:
        if entry in self._in_flight:  # ours, still running: a stalled loop let it go idle
            return
        job_id = fields.get(Entry.JOB, "")
        if fields.get(Entry.RETRY):  # POST /jobs/{id}/retry (app.jobs.retry): forget that it ended, and its spec
            self._closed.pop(job_id, None)
            self._runtimes.pop(job_id, None)
        units = [int(u) for u in fields.get(Entry.UNITS, "").split(",") if u]
        rows = dict(zip(units, json.loads(fields[Entry.ROWS]))) if fields.get(Entry.ROWS) else {}
        flight = InFlight(entry, job_id, units, rows, unfinished=len(units), run=int(fields.get(Entry.RUN) or 0))
        self._in_flight[entry] = flight
        self._units += flight.unfinished
        flight.task = asyncio.create_task(self._process(flight, attempt), name=f"chunk-{entry}")
        flight.task.add_done_callback(lambda _: self._done(flight))

    def _done(self, flight: InFlight) -> None:
        if self._in_flight.get(flight.entry) is flight:
            del self._in_flight[flight.entry]
            self._release(flight, flight.unfinished)

    def _release(self, flight: InFlight, n: int) -> None:
        # a finished unit frees its place at once: the chunk itself waits for its last
        # rows to be stored, which must not keep the backend short of work
        n = min(n, flight.unfinished)
        flight.unfinished -= n
        self._units -= n
        self._room.set()

    def drop_job(self, job_id: str) -> None:
        """The job was cancelled, deleted or ended: cancel its chunks (their calls with them)."""
        self._close(job_id)
        for f in list(self._in_flight.values()):
            if f.job_id == job_id and f.task is not None and not f.task.done():
                f.reason = "job"
                f.task.cancel()

    def _close(self, job_id: str) -> None:
        self._closed[job_id] = None
        self._runtimes.pop(job_id, None)
        while len(self._closed) > CLOSED_CACHE:
            self._closed.popitem(last=False)

    # ---- one chunk ----

    async def _process(self, flight: InFlight, attempt: int) -> None:
        job_id, entry = flight.job_id, flight.entry
        try:
            rt = None if job_id in self._closed else await self._runtime(job_id)
            if rt is not None and flight.run > rt.run:  # a retry's chunk, its job read before the retry
                self._runtimes.pop(job_id, None)
                rt = await self._runtime(job_id)
            if rt is None or flight.run < rt.run:  # gone or ended, or a chunk of a run a retry replaced
                return await self.claims.ack(entry)
            if attempt == 1 and rt.started:
                # the common case, without a round trip: a first delivery has no stored units
                # nor checkpoints, and the job is known to run (a cancel reaches us by pub/sub
                # or by the status poll, and the SAVE script refuses rows of an ended job)
                begun = Begun(JobStatus.RUNNING, set(), {})
            else:
                begun = await self.store.begin(job_id, flight.units, whole=rt.spec.whole)
                if begun.status not in ACTIVE:
                    self._close(job_id)
                    return await self.claims.ack(entry)
                rt.started = True
            chunk = Chunk(job_id, flight.units, flight.rows, begun.checkpoints, attempt, flight.run)
            todo = [u for u in flight.units if u not in begun.done]
            drop = not rt.spec.whole  # whole-stream checkpoints are per slot: kept until the job ends
            if todo and attempt > self.config.max_row_attempts:
                return await self._give_up(rt, chunk, entry, todo)
            if todo:
                def on_unit(result: UnitResult) -> None:
                    if self.on_rows is not None:
                        failed = sum(row.get("error") is not None for _, row in result.rows)
                        self.on_rows(rt.spec.task, len(result.rows), failed)
                    self._release(flight, 1)
                    self._dirty.add(job_id)
                    self.writer.save(SaveOp(job_id, entry, [result], drop_checkpoints=drop, run=flight.run))

                await pipelines.run_units(rt, chunk, todo, on_unit,
                                lambda unit, value: self.writer.checkpoint(job_id, unit, value, flight.run),
                                isolate=attempt > 1)
            self._dirty.add(job_id)
            await self.writer.save(SaveOp(job_id, entry, [], ack=True, drop_checkpoints=drop, run=flight.run))
        except asyncio.CancelledError:
            if flight.reason == "job":
                await asyncio.shield(self.claims.ack(entry))
            raise
        except JobSetupError as exc:
            log.error("job %s cannot run here: %s", job_id, exc)
            await self.store.finish(job_id, JobStatus.FAILED, str(exc))
            await self.claims.ack(entry)
        except Exception as exc:
            # a bug in a task, or Redis gone: leave the chunk to be retried (by any worker)
            # in a second; its delivery count is the attempt number
            log.exception("job %s: chunk %s failed (attempt %d)", job_id, entry, attempt)
            try:
                if not isinstance(exc, RedisError):
                    await self.store.set_last_error(job_id, f"{type(exc).__name__}: {exc}")
                await self.claims.release([entry], after_ms=min(1000, self.claim_idle_ms // 2))
            except RedisError:
                pass

    async def _runtime(self, job_id: str) -> JobRuntime | None:
        rt = self._runtimes.get(job_id)
        if rt is not None:
            self._runtimes.move_to_end(job_id)
            return rt
        loading = self._loading.get(job_id)
        if loading is None:  # the first chunks of a job arrive together: load it once
            loading = self._loading[job_id] = asyncio.ensure_future(self._load_runtime(job_id))
            loading.add_done_callback(lambda _: self._loading.pop(job_id, None))
        return await asyncio.shield(loading)

    async def _load_runtime(self, job_id: str) -> JobRuntime | None:
        found = await self.store.spec(job_id)
        if found is None:
            return None
        spec, run = found
        if spec.pipeline is not None:  # a pipeline job: its runtime is app.jobs.pipelines'
            return self._remember(job_id, pipelines.resolve(job_id, spec, self.registry, self.backends, self.store,
                                                            self.spend), run)
        rt = JobRuntime.resolve(spec, self.registry, self.backends)
        if self.spend is not None:
            rt.llm = self.spend.job_client(  # type: ignore[assignment]
                rt.llm, job_id, spec, lambda error: self.store.finish(job_id, JobStatus.CANCELLED, error))
        return self._remember(job_id, rt, run)

    def _remember(self, job_id: str, rt: Any, run: int) -> Any:
        rt.run = run
        self._runtimes[job_id] = rt
        while len(self._runtimes) > RUNTIME_CACHE:
            self._runtimes.popitem(last=False)
        return rt

    async def _give_up(self, rt: JobRuntime, chunk: Chunk, entry: str, todo: list[int]) -> None:
        last = await self.store.last_error(chunk.job_id) or "the worker running it stopped"
        message = f"gave up after {chunk.attempt - 1} attempts: {last}"
        log.warning("job %s: chunk %s %s", chunk.job_id, entry, message)
        if rt.spec.per_unit is None:
            await self.store.finish(chunk.job_id, JobStatus.FAILED, message)
            return await self.claims.ack(entry)
        await self.writer.save(SaveOp(chunk.job_id, entry, pipelines.error_units(rt, chunk, todo, message), ack=True,
                                      drop_checkpoints=not rt.spec.whole, run=chunk.run))

    # ---- keeping claims, noticing cancels ----

    async def _heartbeat(self) -> None:
        tick = min(0.5, self.claim_idle_ms / 4000)
        touch_every = self.claim_idle_ms / 4000
        last_touch = time.monotonic()
        while not self._helpers_end:
            await asyncio.sleep(tick)
            try:
                if time.monotonic() - last_touch >= touch_every and self._in_flight:
                    last_touch = time.monotonic()
                    for entry in await self.claims.touch(list(self._in_flight)):
                        f = self._in_flight.get(entry)
                        if f is not None and f.task is not None:
                            log.warning("worker %s: chunk %s was taken over by another worker", self.name, entry)
                            f.reason = "lost"
                            f.task.cancel()
                jobs = {f.job_id for f in self._in_flight.values()}
                if jobs:
                    for job_id, status in (await self.store.statuses(list(jobs))).items():
                        if status not in ACTIVE:
                            self.drop_job(job_id)
                if self._dirty:
                    dirty, self._dirty = list(self._dirty), set()
                    await self.store.flush_progress(dirty)
            except RedisError as exc:
                log.warning("worker %s: heartbeat failed: %s", self.name, exc)

    async def _listen_cancel(self) -> None:
        while not self._helpers_end:
            pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(keys.CANCEL_CHANNEL)
                while not self._helpers_end:
                    message = await pubsub.get_message(timeout=1.0)
                    if message is not None and message.get("type") == "message":
                        self.drop_job(message["data"])
            except RedisError as exc:  # the status poll covers the gap
                log.warning("worker %s: cancel channel lost: %s", self.name, exc)
                await asyncio.sleep(1.0)
            finally:
                await pubsub.aclose()


async def _wait_or(tasks: list[asyncio.Task], stop: asyncio.Task, timeout: float) -> None:
    """Wait for every task, or until `stop` finishes, or `timeout`."""
    everything = asyncio.ensure_future(asyncio.wait(tasks))
    await asyncio.wait([everything, stop], timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    everything.cancel()
