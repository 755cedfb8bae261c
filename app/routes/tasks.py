"""/tasks: list, describe and run tasks, answering JSON or server-sent events."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from tasks import Task, TaskRun

from .. import sse
from ..deps import StateDep, wants_sse
from ..errors import SynthserveError
from ..schemas import TaskDetail, TaskList, TaskRequest, TaskResponse

router = APIRouter(tags=["tasks"])
log = logging.getLogger("synthserve")

SSE_DOC = {"text/event-stream": {"schema": {"type": "string"}, "example":
           'event: row\nid: 0\ndata: {"index": 0, "row": {...}}\n\nevent: done\ndata: {"rows": 1, "failed": 0, "usage": {...}}\n\n'}}


@router.get("/tasks", response_model=TaskList)
async def list_tasks(state: StateDep) -> dict:
    return {"tasks": [t.info() for t in state.registry]}


@router.get("/tasks/{name}", response_model=TaskDetail)
async def describe_task(name: str, state: StateDep) -> dict:
    task = state.task(name)
    return {**task.info(), "params_schema": task.Params.model_json_schema()}


@router.post("/tasks/{name}", response_model=TaskResponse,
             responses={200: {"content": SSE_DOC, "description": "JSON, or server-sent events with `stream: true`"},
                        404: {"description": "unknown task"}, 413: {"description": "too many rows"},
                        422: {"description": "invalid body, params, rows or backend"}})
async def run_task(name: str, body: TaskRequest, request: Request, state: StateDep):
    task, run = state.prepare_run(name, body)
    if wants_sse(request, body.stream):
        return sse.SSEResponse(task_events(task, run, tokens=body.stream_tokens, metrics=state.metrics))
    rows: dict[int, dict] = {}
    async for index, row in task.stream(run):
        rows[index] = row
    ordered = [rows[i] for i in sorted(rows)]
    failed = sum(r["error"] is not None for r in ordered)
    state.metrics.count_rows(task.name, len(ordered), failed)
    return JSONResponse({"task": task.name, "rows": ordered, "failed": failed, "usage": run.usage.as_dict(),
                         "seed": run.params.seed})


async def task_events(task: Task, run: TaskRun, *, tokens: bool, metrics=None) -> AsyncIterator[bytes]:
    """`row` events as rows finish (with `token` events before them when asked), then
    `done`; a failure of the whole request becomes an `error` event."""
    events: asyncio.Queue[bytes | None] = asyncio.Queue()
    if tokens:
        run.on_token = lambda i, text: events.put_nowait(sse.encode("token", {"index": i, "text": text}))
    count = failed = 0

    async def pump() -> None:
        nonlocal count, failed
        try:
            async for index, row in task.stream(run):
                count += 1
                failed += row["error"] is not None
                events.put_nowait(sse.encode("row", {"index": index, "row": row}, id=index))
            events.put_nowait(sse.encode("done", {"rows": count, "failed": failed, "usage": run.usage.as_dict(),
                                                  "seed": run.params.seed}))
        except SynthserveError as exc:
            events.put_nowait(sse.encode("error", {"detail": exc.detail}))
        except Exception as exc:
            log.exception("task %s failed mid-stream", task.name)
            events.put_nowait(sse.encode("error", {"detail": f"internal error: {type(exc).__name__}"}))
        events.put_nowait(None)

    producer = asyncio.create_task(pump())
    try:
        while (event := await events.get()) is not None:
            yield event
    finally:
        producer.cancel()  # the client left: cancel every pending LLM call
        await asyncio.gather(producer, return_exceptions=True)
        if metrics is not None:
            metrics.count_rows(task.name, count, failed)
