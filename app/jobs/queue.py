"""The producer: validate a job request exactly as /tasks does (every 4xx before anything
is queued), cut it into chunks of units, and enqueue it (Redis: one MULTI, so a worker
never sees a chunk of a job that does not exist yet).

A unit is what Task.stream runs concurrently: an input row, or one generation of a
generator. Chunks hold `jobs.chunk_units` units; tasks with a varying number of rows per
unit get one unit per chunk (its rows are stored together); tasks that run their own
algorithm over the whole request (Task.stream overridden: evol-*-generator) get one
chunk with every unit, resumed from checkpoints after a crash."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from tasks import Task

from ..runs import build_run
from ..state import AppState
from . import keys
from .models import COMPLETED, MUTABLE, QUEUED, Job, JobRequest, JobSpec, new_job_id, now_iso


@dataclass(slots=True)
class Submission:
    job: Job
    spec: JobSpec
    rows: list[dict[str, Any]]
    chunks: list[list[int]]
    created_us: int


def overrides_stream(task: Task) -> bool:
    return type(task).stream is not Task.stream


def plan(state: AppState, req: JobRequest, owner: str | None) -> Submission:
    """The job, its spec and its chunks; raises the same 4xx errors as POST /tasks."""
    task, run = build_run(state, req.task, req.rows, req.params, req.llm, req.include_raw)
    n_units = task.num_units(run.params, run.rows)
    per_unit = task.rows_per_unit(run.params)
    whole = overrides_stream(task)
    size = state.settings.jobs.chunk_units
    if whole:
        # the task runs its own algorithm over every unit: one chunk, resumed from checkpoints;
        # with a varying number of rows per unit the whole run is one unit, stored at once
        units_total = n_units if per_unit else 1
        chunks = [list(range(units_total))] if units_total else []
    elif per_unit is None:
        units_total, chunks = n_units, [[u] for u in range(n_units)]
    else:
        units_total = n_units
        chunks = [list(range(i, min(i + size, n_units))) for i in range(0, n_units, size)]
    job = Job(id=new_job_id(), task=task.name, owner=owner, status=QUEUED, created_at=now_iso(),
              total=n_units * (per_unit or 1))
    spec = JobSpec(task=task.name, backend=req.llm.backend or state.settings.llm.default_backend,
                   model=req.llm.model, generation_kwargs=req.llm.generation_kwargs.given(),
                   params=req.params, include_raw=req.include_raw,
                   units_total=units_total, per_unit=per_unit, whole=whole, has_rows=not task.generator)
    if not chunks:  # nothing to do (a generator asked for no rows)
        job.status, job.started_at, job.finished_at = COMPLETED, job.created_at, job.created_at
    return Submission(job, spec, list(req.rows), chunks, time.time_ns() // 1000)


async def enqueue(redis: Redis, sub: Submission, *, result_ttl_s: int) -> None:
    """The job hash, its first event, its place in the owner's list and one queue entry
    per chunk (carrying the chunk's input rows), in one MULTI."""
    job, spec = sub.job, sub.spec
    fields = {**job.to_fields(), "spec": spec.model_dump_json(), "units_total": str(spec.units_total),
              "units_done": "0", "rows_out": "0", "variable": "1" if spec.per_unit is None else "0",
              "event_seq": "1", "progress_count": "0", "progress_ms": "0"}
    first = {"e": "done" if job.finished else "progress", **{name: fields[name] for name in MUTABLE}}
    async with redis.pipeline(transaction=True) as pipe:
        pipe.hset(keys.job(job.id), mapping=fields)
        pipe.xadd(keys.events(job.id), first, id="1-0")
        pipe.zadd(keys.owner_index(job.owner), {job.id: sub.created_us})
        for units in sub.chunks:
            entry = {"job": job.id, "units": ",".join(map(str, units))}
            if spec.has_rows:  # the rows travel with the chunk: a worker reads both at once
                entry["rows"] = json.dumps([sub.rows[u] for u in units], ensure_ascii=False, separators=(",", ":"))
            pipe.xadd(keys.QUEUE, entry)
        if job.finished:
            pipe.expire(keys.job(job.id), result_ttl_s)
            pipe.expire(keys.events(job.id), result_ttl_s)
        await pipe.execute()
