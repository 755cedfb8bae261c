"""The producer: cut a validated request (app.runs.build_run checked it exactly as for
/tasks: every 4xx before anything is queued) into chunks of units, and enqueue it in one
MULTI, so a worker never sees a chunk of a job that does not exist yet.

A unit is what Task.stream runs concurrently, as the task declares (Task.split): an input
row, or one generation of a generator. Chunks hold `[jobs] chunk_units` units; tasks with
a varying number of rows per unit get one unit per chunk (its rows are stored together);
a task split "whole" (it runs its own algorithm over the request: evol-*-generator) gets
one chunk with every unit, resumed from checkpoints after a crash."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from tasks import Task, TaskRun

from . import keys
from .keys import QUEUE, SNAPSHOT, Entry, Event, Field, Fields, JobStatus
from .models import Job, JobRequest, JobSpec, new_job_id, now_iso


@dataclass(slots=True)
class Submission:
    job: Job
    spec: JobSpec
    rows: list[dict[str, Any]]
    chunks: list[list[int]]
    created_us: int


def plan(task: Task, run: TaskRun, req: JobRequest, *, owner: str | None, backend: str,
         chunk_units: int) -> Submission:
    """The job, its spec and its chunks. `run` carries the validated params (with the
    seed the job runs with)."""
    params = run.params
    n_units = task.num_units(params, run.rows)
    per_unit = task.rows_per_unit(params)
    if task.split == "whole":
        # with a varying number of rows per unit the whole run is one unit, stored at once
        units_total = n_units if per_unit else 1
        chunks = [list(range(units_total))] if units_total else []
    elif per_unit is None:
        units_total, chunks = n_units, [[u] for u in range(n_units)]
    else:
        units_total = n_units
        chunks = [list(range(i, min(i + chunk_units, n_units))) for i in range(0, n_units, chunk_units)]
    job = Job(id=new_job_id(), task=task.name, owner=owner, status=JobStatus.QUEUED, created_at=now_iso(),
              total=n_units * (per_unit or 1), seed=params.seed)
    spec = JobSpec(task=task.name, backend=backend, model=req.llm.model,
                   generation_kwargs=req.llm.generation_kwargs.given(),
                   params={**req.params, "seed": params.seed}, include_raw=req.include_raw,
                   units_total=units_total, per_unit=per_unit, split=task.split, has_rows=not task.generator,
                   cache=req.cache, max_cost_usd=req.max_cost_usd)
    if not chunks:  # nothing to do (a generator asked for no rows)
        job.status, job.started_at, job.finished_at = JobStatus.COMPLETED, job.created_at, job.created_at
    return Submission(job, spec, list(req.rows), chunks, time.time_ns() // 1000)


def keep_inputs(pipe: Any, job_id: str, units: Iterable[int], rows: list[dict[str, Any]]) -> None:
    """The job's input rows by unit, for POST /jobs/{id}/retry (app.jobs.retry): the queue
    entries that carry them are deleted once done."""
    pipe.hset(keys.inputs(job_id), mapping={u: json.dumps(row, ensure_ascii=False, separators=(",", ":"))
                                            for u, row in zip(units, rows)})


def chunk_entry(job_id: str, units: list[int], rows: list[dict[str, Any]] | None) -> Fields:
    """One queue entry: a chunk of a job's units, with their input rows when the task takes
    rows (they travel with the chunk: a worker reads both at once)."""
    entry: Fields = {Entry.JOB: job_id, Entry.UNITS: ",".join(map(str, units))}
    if rows is not None:
        entry[Entry.ROWS] = json.dumps(rows, ensure_ascii=False, separators=(",", ":"))
    return entry


async def enqueue(redis: Redis, sub: Submission, *, result_ttl_s: int) -> None:
    """The job hash, its first event, its place in the owner's list and one queue entry
    per chunk (carrying the chunk's input rows), in one MULTI."""
    job, spec = sub.job, sub.spec
    fields: Fields = {**job.to_fields(), Field.SPEC: spec.model_dump_json(), Field.UNITS_TOTAL: str(spec.units_total),
              Field.UNITS_DONE: "0", Field.ROWS_OUT: "0", Field.VARIABLE: "1" if spec.per_unit is None else "0",
              Field.EVENT_SEQ: "1", Field.PROGRESS_COUNT: "0", Field.PROGRESS_MS: "0"}
    first: Fields = {Event.KIND: Event.DONE if job.finished else Event.PROGRESS, **{name: fields[name] for name in SNAPSHOT}}
    async with redis.pipeline(transaction=True) as pipe:
        pipe.hset(keys.job(job.id), mapping=fields)
        pipe.xadd(keys.events(job.id), first, id="1-0")
        pipe.zadd(keys.owner_index(job.owner), {job.id: sub.created_us})
        for units in sub.chunks:
            pipe.xadd(QUEUE, chunk_entry(job.id, units, [sub.rows[u] for u in units] if spec.has_rows else None))
        if spec.has_rows and sub.chunks:
            keep_inputs(pipe, job.id, range(len(sub.rows)), sub.rows)
        if job.finished:
            pipe.expire(keys.job(job.id), result_ttl_s)
            pipe.expire(keys.events(job.id), result_ttl_s)
        await pipe.execute()
