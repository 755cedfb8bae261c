"""/jobs: submit batch jobs, follow them (job object, NDJSON results, server-sent events),
cancel and delete them. A job belongs to the API key that created it; others get 404."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.responses import StreamingResponse

from .. import formats, sse
from ..auth import PrincipalDep
from ..deps import JobsDep, OwnedJobDep, StateDep
from ..errors import InvalidInput, NotFound
from ..jobs.models import Job, JobList, JobOut, JobRequest
from ..encoding import JSONBytes
from ..jobs.pipelines import pipeline_job, results_of
from ..jobs.queue import plan
from ..jobs import retry
from ..jobs.retry import RetryRequest
from ..jobs.store import JobStore
from ..spend import dry_run

router = APIRouter(tags=["jobs"])

NDJSON_DOC = {"application/x-ndjson": {"schema": {"type": "string"}, "example":
              '{"index":0,"instruction":"...","generation":"...","model_name":"...","metadata":{...},"error":null}\n'}}
SSE_DOC = {"text/event-stream": {"schema": {"type": "string"}, "example":
           'event: progress\nid: 1\ndata: {"id":"job_...","status":"running",...}\n\n'
           'event: row\nid: 2\ndata: {"index":0,"row":{...}}\n\n'
           'event: done\nid: 9\ndata: {"id":"job_...","status":"completed",...}\n\n'}}
Responses = dict[int | str, dict[str, Any]]
NOT_FOUND: Responses = {404: {"description": "unknown job (or another key's)"}}
UNAVAILABLE: Responses = {503: {"description": "the job store (Redis) is unavailable; retry after `Retry-After`"}}


@router.post("/jobs", status_code=202, response_model=JobOut,
             responses={404: {"description": "unknown task"}, 413: {"description": "too many rows"},
                        422: {"description": "invalid body, params, rows or backend"}, **UNAVAILABLE})
async def create_job(body: JobRequest, request: Request, state: StateDep, jobs: JobsDep,
                     owner: PrincipalDep) -> dict[str, Any] | Response:
    request.state.task = body.task  # for the access log
    if body.pipeline is not None:  # a pipeline job (app.jobs.pipelines)
        sub = await pipeline_job(state, body, owner)
        return JSONBytes(sub) if isinstance(sub, dict) else (await jobs.submit(sub)).public()  # (dict: dry_run)
    assert body.task is not None  # (JobRequest: a task or a pipeline)
    task, run = state.prepare_run(body.task, body)
    if body.dry_run:
        return await dry_run(task, run)
    backend, _ = state.backend(body.llm.backend)
    sub = plan(task, run, body, owner=owner, backend=backend, chunk_units=state.settings.jobs.chunk_units)
    return (await jobs.submit(sub)).public()


@router.get("/jobs", response_model=JobList, responses=UNAVAILABLE)
async def list_jobs(jobs: JobsDep, owner: PrincipalDep,
                    limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> dict[str, Any]:
    return {"jobs": [job.public() for job in await jobs.list_jobs(owner, limit)]}


@router.get("/jobs/{job_id}", response_model=JobOut, responses={**NOT_FOUND, **UNAVAILABLE})
async def get_job(job: OwnedJobDep) -> dict[str, Any]:
    return job.public()


@router.get("/jobs/{job_id}/results",
            responses={200: {"content": NDJSON_DOC, "description": "finished rows, sorted by index"},
                       **NOT_FOUND, **UNAVAILABLE})
async def job_results(job: OwnedJobDep, jobs: JobsDep,
                      format: formats.ResultsFormat = "jsonl") -> StreamingResponse:
    if format != "jsonl":  # CSV, Parquet: app/formats.py
        return formats.results_response(format, job.id, lambda: results_of(jobs, job))
    return StreamingResponse(ndjson(jobs, job), media_type="application/x-ndjson")


@router.get("/jobs/{job_id}/events",
            responses={200: {"content": SSE_DOC, "description": "progress, row and done events"},
                       **NOT_FOUND, **UNAVAILABLE})
async def job_events(job: OwnedJobDep, state: StateDep,
                     last_event_id: Annotated[str | None, Header()] = None) -> sse.SSEResponse:
    after = 0
    if last_event_id:
        try:
            after = max(0, int(last_event_id))
        except ValueError:
            raise InvalidInput(f"Last-Event-ID: expected an event id from this stream, got {last_event_id!r}") from None
    return sse.SSEResponse(state.events.follow(job, after))


@router.post("/jobs/{job_id}/cancel", response_model=JobOut, responses={**NOT_FOUND, **UNAVAILABLE})
async def cancel_job(job: OwnedJobDep, jobs: JobsDep) -> dict[str, Any]:
    cancelled = await jobs.cancel(job.id)
    if cancelled is None:  # deleted meanwhile
        raise NotFound(f"unknown job {job.id!r}")
    return cancelled.public()


@router.post("/jobs/{job_id}/retry", response_model=JobOut,
             responses={**NOT_FOUND, 422: {"description": "the job still runs, or its task cannot be retried"},
                        **UNAVAILABLE})
async def retry_job(job: OwnedJobDep, jobs: JobsDep, state: StateDep,
                    body: RetryRequest | None = None) -> dict[str, Any]:
    """Run again every row with an `error` or no result, under the same id (app.jobs.retry;
    a pipeline job's rows from the step they failed at: retry.retry_pipeline)."""
    again = retry.retry_pipeline if job.pipeline is not None else retry.retry_job
    status = await again(jobs, job.id, update=body.spec_update() if body else {},
                         chunk_units=state.settings.jobs.chunk_units)
    if status == "gone":
        raise NotFound(f"unknown job {job.id!r}")
    if status == "active":
        raise InvalidInput(f"job {job.id!r} is still {job.status}: retry it once it has ended (or cancel it)")
    if status == "unsupported":
        raise InvalidInput(f"task {job.task!r} makes a varying number of rows per unit, or runs over the whole "
                           "job: its stored rows do not say which unit made them, so its jobs cannot be retried "
                           "row by row; submit it again (the call cache answers every call already paid for)")
    retried = await jobs.get(job.id)
    if retried is None:
        raise NotFound(f"unknown job {job.id!r}")
    return retried.public()


@router.delete("/jobs/{job_id}", status_code=204, response_class=Response, responses={**NOT_FOUND, **UNAVAILABLE})
async def delete_job(job: OwnedJobDep, jobs: JobsDep) -> Response:
    await jobs.delete(job)
    return Response(status_code=204)


# ---- framing ----

def ndjson_line(index: int, raw: str) -> str:
    """The stored row with its index first, without decoding it (unless it has an
    `index` column of its own, which the job's index replaces)."""
    if '"index"' in raw:
        row = json.loads(raw)
        row.pop("index", None)
        return json.dumps({"index": index, **row}, ensure_ascii=False, separators=(",", ":"))
    return f'{{"index":{index}}}' if raw == "{}" else f'{{"index":{index},{raw[1:]}'


async def ndjson(jobs: JobStore, job: Job) -> AsyncIterator[bytes]:
    async for batch in results_of(jobs, job):
        yield "".join(ndjson_line(i, raw) + "\n" for i, raw in batch).encode()
