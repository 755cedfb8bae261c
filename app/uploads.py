"""`POST /jobs` with `multipart/form-data` (docs/api.md, "Files in and out, CLI, web page,
CORS"): a `file` part holding the rows (.jsonl, .json, .csv, .parquet) and a `job` part
with the rest of the job as JSON (task, params, llm, ...; no rows).

The file is never held in memory whole: the multipart parser spools the part to a
temporary file (on disk past 1 MB), a first pass validates every row exactly as a JSON
`POST /jobs` does (app.runs, through AppState.prepare_run), a thousand rows at a time,
with a 422 naming the file's line or row before anything is queued; a second pass
enqueues the job and then its chunks, a thousand rows at a time. (A .json file is one
JSON document and is parsed whole: use JSONL for large files.) The body is bounded by
`[server] max_body_bytes`.

JSON bodies go on to app.routes.jobs: this route matches only multipart ones.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Iterator
from typing import Any, BinaryIO

import anyio
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.routing import APIRoute
from pydantic import ValidationError
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException
from starlette.routing import Match
from starlette.types import Scope

from . import formats
from .auth import PrincipalDep, principal
from .deps import JobsDep, StateDep
from .errors import InvalidInput, SynthserveError, TooLarge
from .jobs.models import JobOut, JobRequest
from .jobs.keys import QUEUE
from .jobs.queue import chunk_entry, keep_inputs, plan
from .runs import format_validation_error

UPLOAD_ROWS = 1000  # rows validated, and enqueued, at a time
MAX_JOB_PART = 1 << 20  # the `job` part, when sent as a file


class MultipartRoute(APIRoute):
    """Matches multipart bodies only, so JSON bodies reach the JSON route of the same path."""

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        match, child = super().matches(scope)
        if match is Match.FULL and not _multipart(scope):
            return Match.NONE, {}
        return match, child


def _multipart(scope: Scope) -> bool:
    return any(name == b"content-type" and value.lower().startswith(b"multipart/form-data")
               for name, value in scope["headers"])


router = APIRouter(route_class=MultipartRoute, tags=["jobs"])


@router.post("/jobs", status_code=202, response_model=JobOut, include_in_schema=False)
async def create_job_from_file(request: Request, state: StateDep, jobs: JobsDep,
                               owner: PrincipalDep) -> dict[str, Any]:
    try:
        form = await request.form(max_files=2, max_fields=1)
    except MultiPartException as exc:
        raise InvalidInput(f"multipart body: {exc.message}") from None
    try:
        upload, req = await _parts(form)
        if req.task is None:
            raise InvalidInput("job.pipeline: a file's rows run a task; send a pipeline job as JSON")
        request.state.task = req.task  # for the access log
        task = state.task(req.task)
        if task.generator:
            raise InvalidInput(f"file: task {task.name!r} is a generator and takes no rows")
        name = upload.filename or "file"
        total, seed = await _validate(state, req, upload.file, name)
        req = req.model_copy(update={"params": {**req.params, "seed": seed}})  # one seed for every batch
        job = await _enqueue(state, jobs, req, upload.file, name, total, owner)
    finally:
        await form.close()  # the spooled file goes
    return job.public()


async def _parts(form) -> tuple[UploadFile, JobRequest]:
    upload = form.get("file")
    if not isinstance(upload, UploadFile):
        raise InvalidInput("file: a part named `file` holding the rows (.jsonl, .json, .csv, .parquet) is required")
    try:
        formats.check_readable(upload.filename or "file")
    except formats.FormatError as exc:
        raise InvalidInput(f"file: {exc}") from None
    text = form.get("job", "{}")
    if isinstance(text, UploadFile):
        text = await text.read(MAX_JOB_PART)
    try:
        body = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"job: not JSON ({exc})") from None
    if not isinstance(body, dict):
        raise InvalidInput("job: expected a JSON object (the job without its rows)")
    if "rows" in body:
        raise InvalidInput("job.rows: the rows come from the `file` part")
    try:
        return upload, JobRequest.model_validate(body)
    except ValidationError as exc:
        raise InvalidInput(format_validation_error("job", exc)) from None


def _batches(f: BinaryIO, name: str) -> Iterator[list[tuple[str, dict[str, Any]]]]:
    f.seek(0)
    batch = []
    for item in formats.iter_rows(f, name):
        batch.append(item)
        if len(batch) == UPLOAD_ROWS:
            yield batch
            batch = []
    if batch:
        yield batch


async def _each_batch(f: BinaryIO, name: str) -> AsyncIterator[list[tuple[str, dict[str, Any]]]]:
    """The file's rows a batch at a time, read and decoded on a worker thread."""
    batches = _batches(f, name)
    try:
        while (batch := await anyio.to_thread.run_sync(next, batches, None)) is not None:
            yield batch
    except formats.FormatError as exc:
        raise InvalidInput(f"file: {exc}") from None


def _located(exc: SynthserveError, where: list[str]) -> SynthserveError:
    """`rows[i].field: ...` of a batch as the file's line: `data.csv line 7: field: ...`."""
    if isinstance(exc.detail, str) and (m := re.match(r"rows\[(\d+)\]\.?(.*)", exc.detail)):
        return type(exc)(f"file: {where[int(m.group(1))]}: {m.group(2)}")
    return exc


async def _validate(state, req: JobRequest, f: BinaryIO, name: str) -> tuple[int, int]:
    """Every row checked as a JSON POST /jobs checks them; (rows, the job's seed)."""
    total, seed = 0, req.params.get("seed")
    server = state.settings.server
    async for batch in _each_batch(f, name):
        params = req.params if seed is None else {**req.params, "seed": seed}
        try:
            task, run = state.prepare_run(req.task, req.model_copy(update={"rows": [r for _, r in batch],
                                                                           "params": params}))
        except SynthserveError as exc:
            raise _located(exc, [w for w, _ in batch]) from None
        seed = run.params.seed  # drawn by the first batch when the job gives none
        total += len(batch)
        if total > server.max_rows_per_request:
            raise TooLarge(f"file: more than max_rows_per_request ({server.max_rows_per_request}) rows")
        if total * (task.rows_per_unit(run.params) or 1) > server.max_output_rows_per_request:
            raise TooLarge(f"file: more than max_output_rows_per_request ({server.max_output_rows_per_request}) "
                           "output rows")
    if total == 0:
        raise InvalidInput(f"file: {name} holds no rows")
    return total, seed


async def _enqueue(state, jobs, req: JobRequest, f: BinaryIO, name: str, total: int, owner: str | None):
    """The job with its first batch's chunks (app.jobs.queue, as for JSON), then the other
    chunks a batch at a time. The job counts every row from the start, so it cannot
    finish before its last chunk is queued."""
    backend, _ = state.backend(req.llm.backend)
    chunk_units = state.settings.jobs.chunk_units
    offset, job, per_unit = 0, None, 1
    async for batch in _each_batch(f, name):
        rows = [r for _, r in batch]
        if job is None:
            task, run = state.prepare_run(req.task, req.model_copy(update={"rows": rows}))
            sub = plan(task, run, req.model_copy(update={"rows": rows}), owner=owner, backend=backend,
                       chunk_units=chunk_units)
            per_unit = sub.spec.per_unit
            sub.spec.units_total, sub.job.total = total, total * (per_unit or 1)
            job = await jobs.submit(sub)
        else:
            # one unit per chunk when the rows per unit vary, as app.jobs.queue.plan cuts them
            size = chunk_units if per_unit else 1
            async with jobs.redis.pipeline(transaction=False) as pipe:
                for start in range(0, len(rows), size):
                    part = rows[start:start + size]
                    pipe.xadd(QUEUE, chunk_entry(job.id, list(range(offset + start, offset + start + len(part))), part))
                keep_inputs(pipe, job.id, range(offset, offset + len(rows)), rows)
                await pipe.execute()
        offset += len(rows)
    return job


MULTIPART_DOC = {"schema": {"type": "object", "required": ["file", "job"], "properties": {
    "file": {"type": "string", "format": "binary", "description": "The rows: .jsonl, .json, .csv or .parquet."},
    "job": {"type": "string", "description": "The rest of the job as JSON (task, params, llm, ...), no rows.",
            "example": '{"task": "text-generation", "llm": {"generation_kwargs": {"max_new_tokens": 64}}}'}}}}


def install(app: FastAPI) -> None:
    """Ahead of app.routes.jobs' POST /jobs, which takes the JSON bodies; the OpenAPI
    document shows both bodies on that one operation."""
    before = len(app.router.routes)
    app.include_router(router, dependencies=[Depends(principal)])
    added = app.router.routes[before:]
    del app.router.routes[before:]
    app.router.routes[0:0] = added  # first: a request it does not match goes on to the others
    document = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = document()
            schema["paths"]["/jobs"]["post"]["requestBody"]["content"]["multipart/form-data"] = MULTIPART_DOC
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
