"""/tasks: list, describe and run tasks, answering JSON or server-sent events."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Coroutine

from fastapi import APIRouter, Request
from fastapi.responses import Response

from tasks import Task, TaskRun
from tasks.rendering import off_loop, request_budget
from tasks.streaming import Emit, produced

from .. import sse
from ..encoding import JSONBytes
from ..deps import StateDep, TaskDep, wants_sse
from ..errors import SynthserveError
from ..schemas import TaskDetail, TaskList, TaskRequest, TaskResponse
from ..spend import dry_run

router = APIRouter(tags=["tasks"])
log = logging.getLogger("synthserve")
DRAIN_MARGIN_S = 1.0  # of the graceful shutdown's timeout, kept to answer 503 before uvicorn cuts in

SSE_DOC = {"text/event-stream": {"schema": {"type": "string"}, "example":
           'event: row\nid: 0\ndata: {"index": 0, "row": {...}}\n\nevent: done\ndata: {"rows": 1, "failed": 0, "usage": {...}, "seed": 7}\n\n'}}


@router.get("/tasks", response_model=TaskList)
async def list_tasks(state: StateDep) -> dict:
    return {"tasks": [t.info() for t in state.registry]}


@router.get("/tasks/{name}", response_model=TaskDetail)
async def describe_task(task: TaskDep) -> dict:
    return {**task.info(), "params_schema": task.Params.model_json_schema()}


@router.post("/tasks/{name}", response_model=TaskResponse,
             responses={200: {"content": SSE_DOC, "description": "JSON, or server-sent events with `stream: true`"},
                        404: {"description": "unknown task"}, 413: {"description": "too many rows"},
                        422: {"description": "invalid body, params, rows or backend"}})
async def run_task(name: str, body: TaskRequest, request: Request, state: StateDep):
    # off the event loop: validation compiles and renders user templates, row by row, and
    # that work has threads of its own (tasks.rendering), so it never holds up the others'
    templated = "template" in body.params or hasattr(state.task(name), "template")  # a task file's
    task, run = await (off_loop if templated else asyncio.to_thread)(_build_run, state, name, body)
    if body.dry_run:
        return await dry_run(task, run)
    run.llm = state.spend.admit(run.llm, body.cache)  # cached (as the request says) and priced
    if wants_sse(request, body.stream):
        return sse.SSEResponse(task_events(task, run, tokens=body.stream_tokens, metrics=state.metrics))
    rows: dict[int, dict] = {}

    async def collect() -> None:
        async for index, row in task.stream(run):
            rows[index] = row

    ended = await until_done(collect(), request)
    if ended is not None:  # nobody to answer, or no time left: the rows so far are dropped
        log.info("task %s: %s after %d rows", task.name, ended, len(rows))
        return _ended_early(ended, len(rows))
    ordered = [rows[i] for i in sorted(rows)]
    failed = sum(r["error"] is not None for r in ordered)
    state.metrics.count_rows(task.name, len(ordered), failed)
    return JSONBytes({"task": task.name, "rows": ordered, "failed": failed, "usage": run.usage.as_dict(),
                      "seed": run.params.seed})


def _build_run(state, name: str, body: TaskRequest) -> tuple[Task, TaskRun]:
    with request_budget():
        return state.prepare_run(name, body)


async def until_done(work: Coroutine, request: Request) -> str | None:
    """Run `work` (a request's LLM calls) unless the client leaves or a shutdown runs out of
    time first: then cancel it, and say which. Under ASGI a handler that never reads again
    would learn of a disconnect only when it sends, after paying for every row."""
    done = asyncio.create_task(work)
    left = asyncio.create_task(_disconnected(request))
    stopping = asyncio.create_task(_shutdown_deadline(request.app))
    try:
        await asyncio.wait((done, left, stopping), return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in (done, left, stopping):
            t.cancel()
        await asyncio.gather(done, left, stopping, return_exceptions=True)
    if not done.cancelled():
        done.result()  # raises the work's own failure (a SynthserveError -> its 4xx/5xx)
        return None
    return "client disconnected" if left.done() and not left.cancelled() else "server shutting down"


async def _disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _shutdown_deadline(app) -> None:
    """Returns when a graceful shutdown (app.server) has DRAIN_MARGIN_S left: enough to answer."""
    draining: asyncio.Event | None = getattr(app.state, "draining", None)
    grace: float | None = getattr(app.state, "graceful_timeout_s", None)
    if draining is None or grace is None:
        await asyncio.Future()  # no graceful shutdown here (an app served by a test)
        return
    await draining.wait()
    await asyncio.sleep(max(0.0, grace - DRAIN_MARGIN_S))


def _ended_early(reason: str, finished: int) -> Response:
    if reason == "client disconnected":
        return Response(status_code=499)  # for the access log: nobody reads it
    return JSONBytes({"detail": f"server shutting down: the request was cancelled after {finished} rows; "
                                "send it again"}, status_code=503, headers={"Retry-After": "1"})


async def task_events(task: Task, run: TaskRun, *, tokens: bool, metrics=None) -> AsyncIterator[bytes]:
    """`row` events as rows finish (with `token` events before them when asked), then
    `done`; a failure of the whole request becomes an `error` event."""
    count = failed = 0

    async def pump(emit: Emit[bytes]) -> None:
        nonlocal count, failed
        if tokens:
            run.on_token = lambda i, text: emit(sse.encode("token", {"index": i, "text": text}))
        try:
            async for index, row in task.stream(run):
                count += 1
                failed += row["error"] is not None
                emit(sse.encode("row", {"index": index, "row": row}, id=index))
            emit(sse.encode("done", {"rows": count, "failed": failed, "usage": run.usage.as_dict(),
                                     "seed": run.params.seed}))
        except SynthserveError as exc:
            emit(sse.encode("error", {"detail": exc.detail}))
        except Exception as exc:
            log.exception("task %s failed mid-stream", task.name)
            emit(sse.encode("error", {"detail": f"internal error: {type(exc).__name__}"}))

    try:
        async for event in produced(pump):  # the client leaving cancels every pending LLM call
            yield event
    finally:
        if metrics is not None:
            metrics.count_rows(task.name, count, failed)
