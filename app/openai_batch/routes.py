"""/v1/files and /v1/batches with OpenAI's object shapes, so the `openai` SDK's `files` and
`batches` clients work unchanged (docs/api.md, "OpenAI Batch API, served").

A batch's lines run as durable jobs of the `openai-chat-completions` or
`openai-embeddings` task (tasks/openai_requests.py): one job per backend and model the
lines name (`body.model` is a configured backend, or a model of the default backend),
each validated and queued exactly as a JSON POST /jobs, so the backends' limits, the
cache and crash recovery apply. The batch's status, counts and output files are read
from its jobs: `output_file_id` / `error_file_id` hold one line per finished
`custom_id` (a cancelled batch keeps every finished line)."""

from __future__ import annotations

import json
import re
import time
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from fastapi.routing import APIRoute
from pydantic import BaseModel, ConfigDict, Field
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException

from ..auth import PrincipalDep
from ..deps import JobsDep, StateDep
from ..errors import InvalidInput, NotFound, SynthserveError
from ..jobs.models import Job, JobRequest
from ..jobs.queue import plan
from ..jobs.store import JobStore
from ..schemas import LLMSpec
from .records import BatchRecord, FileRecord, Group, Records, new_id



class OpenAIErrors(APIRoute):
    """Errors as OpenAI sends them (`{"error": {"message", "type", ...}}`, which its SDK
    shows), with this service's `detail` beside."""

    def get_route_handler(self):
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            try:
                return await handler(request)
            except SynthserveError as exc:
                return _error(exc.status_code, exc.detail, exc.headers)
            except RequestValidationError as exc:
                return _error(422, "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()))

        return route


def _error(status: int, detail: Any, headers: dict[str, str] | None = None) -> JSONResponse:
    message = detail if isinstance(detail, str) else json.dumps(detail)
    kind = {401: "authentication_error", 404: "not_found_error"}.get(status, "invalid_request_error")
    return JSONResponse({"error": {"message": message, "type": kind, "param": None, "code": None}, "detail": detail},
                        status_code=status, headers=headers)


router = APIRouter(prefix="/v1", tags=["openai batch"], route_class=OpenAIErrors)

TASKS = {"/v1/chat/completions": "openai-chat-completions", "/v1/embeddings": "openai-embeddings"}
WINDOW = re.compile(r"(\d+)([smh])")  # OpenAI takes only "24h"; shorter windows are ours
UNIT_S = {"s": 1, "m": 60, "h": 3600}


def records(state) -> Records:
    return Records(state.jobs.redis, state.settings.jobs.result_ttl_s)


# ---- files ----

@router.post("/files")
async def create_file(request: Request, state: StateDep, owner: PrincipalDep) -> dict[str, Any]:
    try:
        form = await request.form(max_files=1, max_fields=2)
    except MultiPartException as exc:
        raise InvalidInput(f"multipart body: {exc.message}") from None
    try:
        upload, purpose = form.get("file"), form.get("purpose")
        if not isinstance(upload, UploadFile):
            raise InvalidInput("file: a part named `file` is required")
        if purpose != "batch":
            raise InvalidInput("purpose: only `batch` files are kept here")
        content = await upload.read()  # bounded by [server] max_body_bytes
        try:
            content.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidInput("file: a batch file is JSONL text in UTF-8") from None
        record = FileRecord(id=new_id("file"), filename=upload.filename or "batch.jsonl", purpose=purpose,
                            bytes=len(content), created_at=int(time.time()), owner=owner)
        await records(state).put_file(record, content)
        return record.public()
    finally:
        await form.close()


@router.get("/files/{file_id}")
async def get_file(file_id: str, state: StateDep, jobs: JobsDep, owner: PrincipalDep) -> dict[str, Any]:
    if (output := _output_file(file_id)) is not None:
        batch = await _batch(state, output[0], owner)
        content = b"".join([chunk async for chunk in _output_lines(jobs, batch, output[1])])
        return FileRecord(id=file_id, filename=f"{batch.id}_{output[1]}.jsonl", purpose="batch_output",
                          bytes=len(content), created_at=batch.created_at, owner=owner).public()
    record = await records(state).file(file_id, owner)
    if record is None:
        raise NotFound(f"unknown file {file_id!r}")
    return record.public()


@router.get("/files/{file_id}/content")
async def file_content(file_id: str, state: StateDep, jobs: JobsDep, owner: PrincipalDep) -> Response:
    if (output := _output_file(file_id)) is not None:
        batch = await _batch(state, output[0], owner)
        return StreamingResponse(_output_lines(jobs, batch, output[1]), media_type="application/jsonl")
    if await records(state).file(file_id, owner) is None:
        raise NotFound(f"unknown file {file_id!r}")
    return Response(await records(state).file_content(file_id), media_type="application/jsonl")


def _output_file(file_id: str) -> tuple[str, str] | None:
    """(batch id, "output" or "error") for the files a batch's results are read from."""
    for kind in ("output", "error"):
        if file_id.startswith("file-") and file_id.endswith(f"-{kind}"):
            return file_id[len("file-"):-len(kind) - 1], kind
    return None


async def _output_lines(jobs: JobStore, batch: BatchRecord, kind: str) -> AsyncIterator[bytes]:
    """One line per finished custom_id: the successes, or the failures, in OpenAI's shape."""
    for group in batch.groups:
        job = await jobs.get(group.job)
        if job is None:
            continue
        async for results in jobs.results(job):
            out = []
            for index, raw in results:
                row = json.loads(raw)
                if (row.get("error") is None) != (kind == "output"):
                    continue
                line_id = f"{batch.id}-{group.lines[index]}"
                if row.get("error") is None:
                    response = {"status_code": 200, "request_id": f"req_{line_id}", "body": row["response"]}
                else:
                    status = 400 if row["error"].get("type") == "parse_error" else 500
                    response = {"status_code": status, "request_id": f"req_{line_id}",
                                "body": {"error": {"message": row["error"]["message"], "type": row["error"]["type"]}}}
                out.append(json.dumps({"id": f"batch_req_{line_id}", "custom_id": row["custom_id"],
                                       "response": response, "error": None}, ensure_ascii=False) + "\n")
            yield "".join(out).encode()


# ---- batches ----

class BatchCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    input_file_id: str
    endpoint: str = Field(description="`/v1/chat/completions` or `/v1/embeddings`")
    completion_window: str = "24h"
    metadata: dict[str, str] | None = None


@router.post("/batches")
async def create_batch(body: BatchCreate, state: StateDep, jobs: JobsDep, owner: PrincipalDep) -> dict[str, Any]:
    if body.endpoint not in TASKS:
        raise InvalidInput(f"endpoint: one of {list(TASKS)}")
    if not (window := WINDOW.fullmatch(body.completion_window)):
        raise InvalidInput("completion_window: a duration such as `24h` (also `30m`, `90s`)")
    if await records(state).file(body.input_file_id, owner) is None:
        raise NotFound(f"unknown file {body.input_file_id!r}")
    lines = _lines((await records(state).file_content(body.input_file_id)).decode(), body.endpoint)
    groups: dict[tuple[str, str | None], list[int]] = {}
    for n, line in enumerate(lines):
        model = line["body"]["model"]
        key = (model, None) if model in state.backends else (state.settings.llm.default_backend, model)
        groups.setdefault(key, []).append(n)
    planned = []
    for (backend, model), numbers in groups.items():  # every group checked before any is queued
        req = JobRequest(task=TASKS[body.endpoint], include_raw=False, llm=LLMSpec(backend=backend, model=model),
                         rows=[{"custom_id": lines[n]["custom_id"], "body": lines[n]["body"]} for n in numbers])
        try:
            task, run = state.prepare_run(req.task, req)
        except SynthserveError as exc:
            raise _at_line(exc, numbers) from None
        planned.append((numbers, plan(task, run, req, owner=owner, backend=backend,
                                      chunk_units=state.settings.jobs.chunk_units)))
    batch = BatchRecord(id=new_id("batch"), endpoint=body.endpoint, input_file_id=body.input_file_id,
                        completion_window=body.completion_window, created_at=int(time.time()), total=len(lines),
                        metadata=body.metadata, owner=owner)
    batch.expires_at = batch.created_at + int(window.group(1)) * UNIT_S[window.group(2)]
    for numbers, sub in planned:
        job = await jobs.submit(sub)
        batch.groups.append(Group(job=job.id, lines=numbers))
    await records(state).put_batch(batch)
    return await _public(state, jobs, batch)


def _lines(text: str, endpoint: str) -> list[dict[str, Any]]:
    """The input file's requests, each checked: a 422 names the line (1-based)."""
    lines, seen = [], set()
    for n, raw in enumerate(text.splitlines(), 1):
        if not raw.strip():
            continue
        try:
            line = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise InvalidInput(f"input file line {n}: invalid JSON ({exc.msg})") from None
        if not isinstance(line, dict) or not isinstance(line.get("custom_id"), str):
            raise InvalidInput(f"input file line {n}: a request object with a string `custom_id` is expected")
        if line["custom_id"] in seen:
            raise InvalidInput(f"input file line {n}: custom_id {line['custom_id']!r} appears twice")
        seen.add(line["custom_id"])
        if line.get("url") != endpoint or line.get("method", "POST") != "POST":
            raise InvalidInput(f"input file line {n}: `url` must be the batch's endpoint {endpoint} (method POST)")
        if not isinstance(line.get("body"), dict) or not isinstance(line["body"].get("model"), str):
            raise InvalidInput(f"input file line {n}: `body` must be a request object naming its `model`")
        lines.append(line)
    if not lines:
        raise InvalidInput("input file: no requests")
    return lines


def _at_line(exc: SynthserveError, numbers: list[int]) -> SynthserveError:
    """`rows[i].body: ...` of a group's job as the input file's line."""
    if isinstance(exc.detail, str) and (m := re.match(r"rows\[(\d+)\]\.?(.*)", exc.detail)):
        return type(exc)(f"input file line {numbers[int(m.group(1))] + 1}: {m.group(2)}")
    return exc


async def _batch(state, batch_id: str, owner: str | None) -> BatchRecord:
    batch = await records(state).batch(batch_id, owner)
    if batch is None:
        raise NotFound(f"unknown batch {batch_id!r}")
    return batch


def _unix(stamp: str | None) -> int | None:
    return int(datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()) if stamp else None


async def _public(state, jobs: JobStore, batch: BatchRecord) -> dict[str, Any]:
    """The batch object, its state read from its jobs. A batch still running past its
    completion window expires here: its jobs are cancelled, its finished lines kept."""
    found: list[Job] = [job for g in batch.groups if (job := await jobs.get(g.job)) is not None]
    finished = all(job.finished for job in found)
    if not finished and batch.expired_at is None and batch.expires_at and time.time() > batch.expires_at:
        batch.expired_at = int(time.time())
        await records(state).put_batch(batch)
        for job in found:
            if not job.finished:
                await jobs.cancel(job.id)
    completed = sum(job.completed for job in found)
    failed = sum(job.failed for job in found)
    ended = max((_unix(job.finished_at) or batch.created_at for job in found), default=batch.created_at)
    if batch.expired_at:
        status = "expired"
    elif not finished:
        status = "cancelling" if batch.cancelling_at else "in_progress"
    elif batch.cancelling_at:
        status = "cancelled"
    elif any(job.status == "failed" for job in found):
        status = "failed"
    else:
        status = "completed"
    return {
        "id": batch.id, "object": "batch", "endpoint": batch.endpoint, "errors": None,
        "input_file_id": batch.input_file_id, "completion_window": batch.completion_window, "status": status,
        "output_file_id": f"file-{batch.id}-output" if (finished or batch.expired_at) and completed else None,
        "error_file_id": f"file-{batch.id}-error" if (finished or batch.expired_at) and failed else None,
        "created_at": batch.created_at, "in_progress_at": batch.created_at,
        "expires_at": batch.expires_at, "finalizing_at": ended if finished else None,
        "completed_at": ended if status == "completed" else None,
        "failed_at": ended if status == "failed" else None, "expired_at": batch.expired_at,
        "cancelling_at": batch.cancelling_at, "cancelled_at": ended if status == "cancelled" else None,
        "request_counts": {"total": batch.total, "completed": completed, "failed": failed},
        "metadata": batch.metadata,
    }


@router.get("/batches/{batch_id}")
async def get_batch(batch_id: str, state: StateDep, jobs: JobsDep, owner: PrincipalDep) -> dict[str, Any]:
    return await _public(state, jobs, await _batch(state, batch_id, owner))


@router.get("/batches")
async def list_batches(state: StateDep, jobs: JobsDep, owner: PrincipalDep,
                       limit: Annotated[int, Query(ge=1, le=100)] = 20, after: str | None = None) -> dict[str, Any]:
    ids = await records(state).batch_ids(owner, 1000)
    if after in ids:
        ids = ids[ids.index(after) + 1:]
    data = [await _public(state, jobs, batch) for batch_id in ids[:limit]
            if (batch := await records(state).batch(batch_id, owner)) is not None]
    return {"object": "list", "data": data, "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None, "has_more": len(ids) > limit}


@router.post("/batches/{batch_id}/cancel")
async def cancel_batch(batch_id: str, state: StateDep, jobs: JobsDep, owner: PrincipalDep) -> dict[str, Any]:
    batch = await _batch(state, batch_id, owner)
    running = [g.job for g in batch.groups if (job := await jobs.get(g.job)) is not None and not job.finished]
    if running and batch.cancelling_at is None:  # a finished batch stays as it ended
        batch.cancelling_at = int(time.time())
        await records(state).put_batch(batch)
    for job_id in running:
        await jobs.cancel(job_id)
    return await _public(state, jobs, batch)
