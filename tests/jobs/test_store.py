"""The Redis layer without HTTP: the SAVE script's exactly-once gate, expiry, and an
in-process Worker on a registry with test tasks (retries, give-up, setup failures)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import random

import pytest

from app.config import BackendConfig
from app.jobs import keys
from app.jobs.models import JobRequest, UnitResult
from app.jobs.queue import plan
from app.jobs.store import JobStore, SaveOp
from app.jobs.worker import Worker
from app.state import AppState
from tasks.generation import TextGeneration

from .conftest import jobs_settings, text_rows, wait_for


class Buggy(TextGeneration):
    """text-generation that raises (a bug, not a row error) on the row "boom"."""

    name = "buggy-generation"

    async def run(self, ctx, row, params):
        if row["instruction"] == "boom":
            raise RuntimeError("kaboom")
        return await super().run(ctx, row, params)


@pytest.fixture
async def env(mock, rds, redis_server):
    settings = jobs_settings(mock.url, redis_server.url, max_concurrency=4, claim_idle_ms=200,
                             chunk_units=2, result_ttl_s=3600)
    state = AppState.build(settings)
    state.registry.add(Buggy())
    store = JobStore.connect(redis_server.url, settings.jobs)
    try:
        yield settings, state, store
    finally:
        await store.aclose()
        for client in state.backends.values():
            await client.aclose()


@contextlib.asynccontextmanager
async def running_worker(store, state, settings, backends=None, **jobs):
    worker = Worker(store, state.registry, backends or state.backends, settings.jobs.model_copy(update=jobs))
    task = asyncio.create_task(worker.run())
    try:
        yield worker
    finally:
        worker.stop(now=True)
        await task


async def finished(store, job_id, timeout=30):
    async def check():
        job = await store.get(job_id)
        return job if job.finished else None
    return await wait_for(check, timeout=timeout)


def submission(state, req: JobRequest):
    task, run = state.prepare_run(req.task, req)
    backend, _ = state.backend(req.llm.backend)
    return plan(task, run, req, owner=None, backend=backend, chunk_units=state.settings.jobs.chunk_units)


@dataclasses.dataclass
class LoggedEvent:
    seq: int
    kind: str
    fields: dict

    @property
    def index(self) -> int:
        return int(self.fields[keys.Event.INDEX])


async def event_log(store, job) -> list[LoggedEvent]:
    entries = await store.redis.xrange(keys.events(job.id))
    return [LoggedEvent(int(i.split("-")[0]), f[keys.Event.KIND], f) for i, f in entries]


async def all_results(store, job):
    return [item for batch in [b async for b in store.results(job)] for item in batch]


async def test_save_counts_a_unit_once(env, rds):
    settings, state, store = env
    sub = submission(state, JobRequest(task="text-generation", rows=text_rows(3)))
    job = await store.submit(sub)
    row = {"instruction": "row 0", "generation": "x", "error": None}

    def op(unit: int) -> SaveOp:
        return SaveOp(job.id, "", [UnitResult(unit, [(unit, {**row, "u": unit})], (2, 3))])

    assert await store.save([op(0), op(0)]) == ["running", "running"]
    rds.script_flush()  # as after a Redis restart: the scripts are loaded again
    assert await store.save([op(0)]) == ["running"]
    got = await store.get(job.id)
    assert (got.completed, got.failed, got.status) == (1, 0, "running")
    assert rds.hlen(keys.results(job.id)) == 1
    events = await event_log(store, got)
    assert [e.kind for e in events] == ["progress", "row", "progress"]  # queued, the one row, its progress
    errored = SaveOp(job.id, "", [UnitResult(1, [(1, {**row, "error": {"type": "llm_error", "message": "x"}})])])
    assert await store.save([errored, op(2)]) == ["running", "completed"]
    got = await store.get(job.id)
    assert (got.completed, got.failed, got.status, got.total) == (2, 1, "completed", 3)
    assert got.finished_at is not None
    # ended: unit marks and checkpoints gone, the rest expires after result_ttl_s
    assert not rds.exists(keys.units(job.id), keys.checkpoints(job.id))
    for key in (keys.job(job.id), keys.results(job.id), keys.events(job.id)):
        assert 3500 < rds.ttl(key) <= 3600
    assert [i for i, _ in await all_results(store, got)] == [0, 1, 2]
    # a late save for an ended job changes nothing
    assert await store.save([op(0)]) == ["completed"]
    assert rds.hlen(keys.results(job.id)) == 3


async def test_a_chunk_that_keeps_failing_gives_up_with_an_error(env):
    settings, state, store = env
    rows = [{"instruction": "fine 0"}, {"instruction": "boom"}, {"instruction": "fine 2"}, {"instruction": "fine 3"}]
    sub = submission(state, JobRequest(task="buggy-generation", rows=rows))
    job = await store.submit(sub)
    async with running_worker(store, state, settings):
        job = await finished(store, job.id)
    assert job.status == "completed"
    assert (job.completed, job.failed) == (3, 1)
    out = {i: json.loads(raw) for i, raw in await all_results(store, job)}
    assert sorted(out) == [0, 1, 2, 3]
    assert out[1]["error"]["type"] == "worker_error"
    assert "gave up after 3 attempts" in out[1]["error"]["message"] and "kaboom" in out[1]["error"]["message"]
    assert out[1]["generation"] is None and out[1]["instruction"] == "boom"
    assert out[0]["generation"] == "Echo: fine 0" and out[0]["error"] is None


async def test_a_job_the_worker_cannot_run_fails(env, mock):
    settings, state, store = env
    other = BackendConfig(provider="openai", base_url=mock.url + "/v1", model="mock-model")
    settings.backends["other"] = other
    state = AppState.build(settings)
    sub = submission(state, JobRequest(task="text-generation", rows=text_rows(2), llm={"backend": "other"}))
    job = await store.submit(sub)
    worker_backends = {"mock": state.backends["mock"]}  # this worker lacks "other"
    async with running_worker(store, state, settings, backends=worker_backends):
        job = await finished(store, job.id)
    assert job.status == "failed" and "other" in job.error
    events = await event_log(store, job)
    assert events[-1].kind == "done" and events[-1].fields["status"] == "failed"
    for client in state.backends.values():
        await client.aclose()


class SilentWorker(Worker):
    """A worker whose claims go stale while it works (as if its loop stalled)."""

    def __post_init__(self) -> None:
        super().__post_init__()

        async def no_reclaim(count):  # (its own XAUTOCLAIM would refresh its chunks too)
            return []
        self.claims.reclaim = no_reclaim

    async def _heartbeat(self) -> None:
        await asyncio.Event().wait()


async def test_rows_land_once_when_a_chunk_is_taken_over_while_it_runs(env, mock, rds):
    settings, state, store = env
    settings.jobs.max_row_attempts = 10
    mock.configure(latency_ms=400)  # longer than claim_idle_ms (200): the chunks go idle mid-call
    n = 16
    sub = submission(state, JobRequest(task="text-generation", rows=text_rows(n)))
    job = await store.submit(sub)
    silent = SilentWorker(store, state.registry, state.backends, settings.jobs.model_copy(update={"worker_units": n}))
    silent_task = asyncio.create_task(silent.run())
    await wait_for(lambda: len(silent._in_flight) == n // 2, timeout=10)  # it holds every chunk
    async with running_worker(store, state, settings, worker_units=n):
        job = await finished(store, job.id, timeout=60)
    silent.stop(now=True)
    await silent_task
    assert (await mock.astats())["requests"] > n  # both ran some rows
    assert (job.status, job.completed, job.failed) == ("completed", n, 0)
    stored = await all_results(store, job)
    assert [i for i, _ in stored] == list(range(n))
    assert job.output_tokens == sum(json.loads(raw)["metadata"]["usage"]["output_tokens"] for _, raw in stored)
    events = await event_log(store, job)
    assert sorted(e.index for e in events if e.kind == "row") == list(range(n))


async def test_progress_events_are_throttled(env):
    settings, state, store = env
    n = 200
    sub = submission(state, JobRequest(task="text-generation", rows=text_rows(n)))
    job = await store.submit(sub)
    rng = random.Random(0)
    order = list(range(n))
    rng.shuffle(order)
    for unit in order:  # 200 saves in well under a second
        await store.save([SaveOp(job.id, "", [UnitResult(unit, [(unit, {"error": None})])])])
    events = await event_log(store, job)
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert sum(e.kind == "row" for e in events) == n
    assert sum(e.kind == "progress" for e in events) <= 3
    assert events[-1].kind == "done"


async def test_live_workers_keep_their_chunks(env, mock):
    """Calls slower than claim_idle_ms: the heartbeat keeps every held chunk fresh, so
    the other worker takes nothing over and no row is run twice."""
    settings, state, store = env
    mock.configure(latency_ms=700)
    n = 16
    sub = submission(state, JobRequest(task="text-generation", rows=text_rows(n)))
    job = await store.submit(sub)
    async with running_worker(store, state, settings) as first:
        await wait_for(lambda: len(first._in_flight) > 1, timeout=10)
        async with running_worker(store, state, settings):
            job = await finished(store, job.id, timeout=60)
    assert (job.status, job.completed) == ("completed", n)
    assert (await mock.astats())["requests"] == n


async def test_a_retry_refuses_what_the_run_before_still_writes(env, rds):
    from app.jobs.retry import retry_job

    settings, state, store = env
    job = await store.submit(submission(state, JobRequest(task="text-generation", rows=text_rows(3))))
    row = {"instruction": "row", "generation": "x", "error": None}
    failed = {**row, "generation": None, "error": {"type": "llm_error", "message": "x"}}

    def op(unit: int, value: dict, run: int = 0) -> SaveOp:
        return SaveOp(job.id, "", [UnitResult(unit, [(unit, {**value, "u": unit})], (2, 3))], run=run)

    assert await store.save([op(0, row), op(1, failed), op(2, row)]) == ["running", "running", "completed"]
    assert await retry_job(store, job.id, update={}, chunk_units=2) == "queued"
    entries = rds.xrange(keys.QUEUE)
    assert [(e[keys.Entry.UNITS], e.get(keys.Entry.RUN)) for _, e in entries] == [("0,1", None), ("2", None), ("1", "1")]
    # a worker of the first run still had unit 1 (and a checkpoint of it) on its way: refused
    assert await store.save([op(1, row)], [(job.id, 1, '{"step": "late"}', 0)]) == ["queued"]
    got = await store.get(job.id)
    assert (got.completed, got.failed, got.status) == (2, 0, "queued")
    assert not rds.hexists(keys.results(job.id), 1) and not rds.hexists(keys.checkpoints(job.id), 1)
    # the retry's own run stores it
    assert await store.save([op(1, row, run=1)], [(job.id, 1, '{"step": "now"}', 1)]) == ["completed"]
    got = await store.get(job.id)
    assert (got.completed, got.failed, got.status) == (3, 0, "completed")
    assert [json.loads(r)["u"] for _, r in await all_results(store, got)] == [0, 1, 2]


async def test_chunks_of_a_run_a_retry_replaced_are_dropped_unrun(env, mock, rds):
    from app.jobs.retry import retry_job

    settings, state, store = env
    job = await store.submit(submission(state, JobRequest(task="text-generation", rows=text_rows(4))))
    await store.finish(job.id, "cancelled")  # before any worker read its two chunks
    assert await retry_job(store, job.id, update={}, chunk_units=2) == "queued"
    assert rds.xlen(keys.QUEUE) == 4  # the first run's two chunks, still queued, and the retry's two
    before = mock.stats()["requests"]
    async with running_worker(store, state, settings):
        got = await finished(store, job.id)
    assert got.status == "completed" and (got.completed, got.failed) == (4, 0)
    assert mock.stats()["requests"] - before == 4  # each row called once: the stale chunks were dropped
    assert [i for i, _ in await all_results(store, got)] == [0, 1, 2, 3]
