"""/jobs: submit batch jobs, follow them (job object, NDJSON results, server-sent events),
cancel and delete them. A job belongs to the API key that created it; others get 404."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.responses import StreamingResponse
from fastapi.sse import format_sse_event

from .. import formats, sse
from ..auth import PrincipalDep
from ..deps import StateDep
from ..errors import InvalidInput, NotFound
from ..jobs.models import Job, JobList, JobOut, JobRequest
from ..jobs.queue import plan
from ..jobs.store import JobStore

router = APIRouter(tags=["jobs"])

EVENT_WAIT_S = 1.0  # one blocking read of the event log; between reads the job's end is checked
KEEPALIVE_S = 15.0

NDJSON_DOC = {"application/x-ndjson": {"schema": {"type": "string"}, "example":
              '{"index":0,"instruction":"...","generation":"...","model_name":"...","metadata":{...},"error":null}\n'}}
SSE_DOC = {"text/event-stream": {"schema": {"type": "string"}, "example":
           'event: progress\nid: 1\ndata: {"id":"job_...","status":"running",...}\n\n'
           'event: row\nid: 2\ndata: {"index":0,"row":{...}}\n\n'
           'event: done\nid: 9\ndata: {"id":"job_...","status":"completed",...}\n\n'}}
NOT_FOUND = {404: {"description": "unknown job (or another key's)"}}


async def owned_job(store: JobStore, job_id: str, owner: str | None) -> Job:
    job = await store.get(job_id)
    if job is None or job.owner != owner:
        raise NotFound(f"unknown job {job_id!r}")
    return job


@router.post("/jobs", status_code=202, response_model=JobOut,
             responses={404: {"description": "unknown task"}, 413: {"description": "too many rows"},
                        422: {"description": "invalid body, params, rows or backend"}})
async def create_job(body: JobRequest, request: Request, state: StateDep, owner: PrincipalDep) -> dict:
    request.state.task = body.task  # for the access log
    job = await state.jobs.submit(plan(state, body, owner))
    return job.public()


@router.get("/jobs", response_model=JobList)
async def list_jobs(state: StateDep, owner: PrincipalDep,
                    limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> dict:
    return {"jobs": [job.public() for job in await state.jobs.list(owner, limit)]}


@router.get("/jobs/{job_id}", response_model=JobOut, responses=NOT_FOUND)
async def get_job(job_id: str, state: StateDep, owner: PrincipalDep) -> dict:
    return (await owned_job(state.jobs, job_id, owner)).public()


@router.get("/jobs/{job_id}/results",
            responses={200: {"content": NDJSON_DOC, "description": "finished rows, sorted by index"}, **NOT_FOUND})
async def job_results(job_id: str, state: StateDep, owner: PrincipalDep,
                      format: formats.ResultsFormat = "jsonl") -> StreamingResponse:
    job = await owned_job(state.jobs, job_id, owner)
    if format != "jsonl":  # CSV, Parquet: app/formats.py
        return formats.results_response(format, job.id, lambda: state.jobs.results(job))
    return StreamingResponse(ndjson(state.jobs, job), media_type="application/x-ndjson")


@router.get("/jobs/{job_id}/events",
            responses={200: {"content": SSE_DOC, "description": "progress, row and done events"}, **NOT_FOUND})
async def job_events(job_id: str, state: StateDep, owner: PrincipalDep,
                     last_event_id: Annotated[str | None, Header()] = None) -> sse.SSEResponse:
    job = await owned_job(state.jobs, job_id, owner)
    after = 0
    if last_event_id:
        try:
            after = max(0, int(last_event_id))
        except ValueError:
            raise InvalidInput(f"Last-Event-ID: expected an event id from this stream, got {last_event_id!r}") from None
    return sse.SSEResponse(events(state.jobs, job, after))


@router.post("/jobs/{job_id}/cancel", response_model=JobOut, responses=NOT_FOUND)
async def cancel_job(job_id: str, state: StateDep, owner: PrincipalDep) -> dict:
    await owned_job(state.jobs, job_id, owner)
    job = await state.jobs.cancel(job_id)
    if job is None:
        raise NotFound(f"unknown job {job_id!r}")
    return job.public()


@router.delete("/jobs/{job_id}", status_code=204, response_class=Response, responses=NOT_FOUND)
async def delete_job(job_id: str, state: StateDep, owner: PrincipalDep) -> Response:
    job = await owned_job(state.jobs, job_id, owner)
    await state.jobs.delete(job)
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


async def ndjson(store: JobStore, job: Job) -> AsyncIterator[bytes]:
    async for batch in store.results(job):
        yield "".join(ndjson_line(i, raw) + "\n" for i, raw in batch).encode()


async def events(store: JobStore, job: Job, after: int) -> AsyncIterator[bytes]:
    """The job's event log from `after` on, following it until `done`."""
    quiet_since = time.monotonic()
    while True:
        batch = await store.events(job, after, EVENT_WAIT_S)
        if batch is None:  # deleted (or expired) meanwhile
            return
        if not batch:
            current = await store.get(job.id)
            if current is None or current.finished:  # its `done` is at or before `after`
                return
            if time.monotonic() - quiet_since >= KEEPALIVE_S:
                quiet_since = time.monotonic()
                yield format_sse_event(comment="keep-alive")
            continue
        rows = iter(await store.rows(job.id, [e.index for e in batch if e.kind == "row"]))
        out = []
        for event in batch:
            after = event.seq
            if event.kind == "row":
                raw = next(rows)
                if raw is not None:
                    out.append(format_sse_event(data_str=f'{{"index":{event.index},"row":{raw}}}',
                                                event="row", id=str(event.seq)))
            else:
                out.append(sse.encode(event.kind, event.job.public(), id=event.seq))
                if event.kind == "done":
                    yield b"".join(out)
                    return
        quiet_since = time.monotonic()
        yield b"".join(out)
