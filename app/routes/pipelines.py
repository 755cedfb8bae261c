"""/pipelines: list, describe and run pipelines (docs/api.md, "Pipelines"), answering JSON
or server-sent events: `row` events as final rows finish, `step` events with the counters
per step (at most every 0.5 s), then `done`."""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import AsyncIterator
from typing import Any, Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field

from .. import sse
from ..deps import StateDep, wants_sse
from ..encoding import JSONBytes
from ..errors import SynthserveError
from ..schemas import UsageOut
from ..pipelines import catalog, prepare
from ..pipelines.check import DedupPlan, Plan
from ..pipelines.dedup import DedupIndex
from ..pipelines.estimate import estimate
from ..pipelines.execute import Executor
from ..pipelines.mermaid import mermaid
from ..pipelines.run import PipelineRun, clients, gated, sort_key
from .tasks import _ended_early, until_done

router = APIRouter(tags=["pipelines"])
log = logging.getLogger("synthserve")
STEP_EVENT_INTERVAL_S = 0.5
DEDUP_TTL_S = 86_400  # a request's dedup index, should it outlive the request (it is deleted after)

SSE_DOC = {"text/event-stream": {"schema": {"type": "string"}, "example":
           'event: row\nid: 0\ndata: {"id": "0.1", "row": {...}}\n\nevent: step\ndata: {"steps": {...}}\n\n'
           'event: done\ndata: {"rows": 3, "failed": 0, "filtered": 1, "usage": {...}, "seed": 7, "steps": {...}}\n\n'}}
ERRORS: dict[int | str, dict[str, Any]] = {404: {"description": "unknown pipeline"}, 413: {"description": "too many rows"},
          422: {"description": "invalid definition or rows (the message names the step and the column)"}}


class PipelineRunRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    rows: list[dict[str, Any]] = Field(default_factory=list,
                                       description="Input rows, with the pipeline's input columns.")
    include_raw: bool = Field(True, description="Keep each step's `raw_input` and `raw_output` in `metadata.steps`.")
    stream: bool = Field(False, description="Answer with server-sent events (also with `Accept: text/event-stream`).")
    seed: int | None = Field(None, ge=0, description=(
        "Seeds every step's random choices (a step's own params.seed wins); drawn and returned when omitted."))
    cache: bool | Literal["refresh"] = Field(True, description="The LLM-call cache, as for /tasks.")
    dry_run: bool = Field(False, description=(
        "Answer an estimate `{calls, input_tokens, max_output_tokens, cost_usd}` instead; no call is made "
        "(later calls counted with empty answers, an explode as one row)."))


class InlinePipelineRequest(PipelineRunRequest):
    pipeline: dict[str, Any] = Field(description="The definition: {name, description, steps}.")


class PipelineInfo(BaseModel):
    name: str
    description: str
    steps: list[dict[str, Any]] = Field(description="Task, filter, dedup and keep steps (docs/pipelines.md).")


class PipelineList(BaseModel):
    pipelines: list[PipelineInfo]


class PipelineDetail(PipelineInfo):
    inputs: list[str] = Field(description="Columns every input row must have.")
    outputs: list[str] = Field(description="Columns of a final row (besides id, metadata, error).")
    mermaid: str = Field(description="The graph as a Mermaid flowchart.")


class StepCounts(BaseModel):
    rows_in: int
    rows_out: int = Field(description="Rows that left the step (after explode), without an error.")
    failed: int
    filtered: int = Field(description="Rows a filter or dedup step dropped.")
    usage: UsageOut


class PipelineResponse(BaseModel):
    pipeline: str
    rows: list[dict[str, Any]] = Field(description="Final rows, sorted by id: id, columns, metadata, error.")
    failed: int
    filtered: int
    usage: UsageOut
    seed: int
    steps: dict[str, StepCounts]


@router.get("/pipelines", response_model=PipelineList)
async def list_pipelines(state: StateDep) -> dict:
    found = await asyncio.to_thread(catalog.load_all, state.settings)
    return {"pipelines": [p.public() for p in found.values()]}


@router.get("/pipelines/{name}", response_model=PipelineDetail, responses=ERRORS)
async def describe_pipeline(name: str, state: StateDep) -> dict:
    def describe() -> dict:
        pipeline = catalog.get(state.settings, name)
        plan = prepare.plan(state, pipeline, seed=0)
        return {**pipeline.public(), "inputs": plan.inputs, "outputs": plan.outputs, "mermaid": mermaid(plan)}
    return await asyncio.to_thread(describe)


@router.post("/pipelines/{name}", response_model=PipelineResponse, responses={200: {"content": SSE_DOC, "description": "JSON, or server-sent events"},
                                             **ERRORS})
async def run_named(name: str, body: PipelineRunRequest, request: Request, state: StateDep):
    return await _run(state, name, body, request)


@router.post("/pipelines", response_model=PipelineResponse, responses={200: {"content": SSE_DOC, "description": "JSON, or server-sent events"},
                                      **ERRORS})
async def run_inline(body: InlinePipelineRequest, request: Request, state: StateDep):
    return await _run(state, body.pipeline, body, request)


async def _run(state, ref: str | dict[str, Any], body: PipelineRunRequest, request: Request):
    def ready() -> tuple[Plan, list[dict[str, Any]]]:
        plan = prepare.plan(state, prepare.definition(state, ref), body.seed)
        return plan, prepare.rows_for(state, plan, body.rows)

    plan, rows = await asyncio.to_thread(ready)
    request.state.task = f"pipeline:{plan.name}"  # for the access log
    if body.dry_run:
        return JSONBytes(await estimate(plan, rows))
    wrap = gated(lambda llm: state.spend.admit(llm, body.cache))
    needs_index = any(isinstance(p, DedupPlan) for p in plan.steps)
    dedup = DedupIndex(state.jobs.redis, f"run-{secrets.token_hex(8)}", DEDUP_TTL_S) if needs_index else None
    run = PipelineRun(Executor(plan, clients(plan, wrap), include_raw=body.include_raw, dedup=dedup), rows)
    if wants_sse(request, body.stream):
        return sse.SSEResponse(_events(run, plan, dedup, state))
    out: list[dict[str, Any]] = []

    async def collect() -> None:
        try:
            async for row in run.stream():
                out.append(row)
        finally:
            if dedup is not None:
                await asyncio.shield(dedup.drop())

    ended = await until_done(collect(), request)
    if ended is not None:
        log.info("pipeline %s: %s after %d rows", plan.name, ended, len(out))
        return _ended_early(ended, len(out))
    out.sort(key=lambda r: sort_key(r["id"]))
    _count(state, plan, run)
    return JSONBytes({"pipeline": plan.name, "rows": out, **_summary(run, plan)})


def _summary(run: PipelineRun, plan: Plan) -> dict[str, Any]:
    return {"failed": run.failed, "filtered": run.filtered, "usage": run.usage.as_dict(), "seed": plan.seed,
            "steps": run.steps}


def _count(state, plan: Plan, run: PipelineRun) -> None:
    if state.metrics is not None:
        state.metrics.count_rows(f"pipeline:{plan.name}", run.count, run.failed)


async def _events(run: PipelineRun, plan: Plan, dedup: DedupIndex | None, state) -> AsyncIterator[bytes]:
    events: asyncio.Queue[bytes | None] = asyncio.Queue()

    async def pump() -> None:
        try:
            async for row in run.stream():
                events.put_nowait(sse.encode("row", {"id": row["id"], "row": row}, id=run.count - 1))
            events.put_nowait(sse.encode("done", {"rows": run.count, **_summary(run, plan)}))
        except SynthserveError as exc:
            events.put_nowait(sse.encode("error", {"detail": exc.detail}))
        except Exception as exc:
            log.exception("pipeline %s failed mid-stream", plan.name)
            events.put_nowait(sse.encode("error", {"detail": f"internal error: {type(exc).__name__}"}))
        events.put_nowait(None)

    async def ticker() -> None:  # the counters, when they moved, at most every STEP_EVENT_INTERVAL_S
        sent = 0
        while True:
            await asyncio.sleep(STEP_EVENT_INTERVAL_S)
            if run.version != sent:
                sent = run.version
                events.put_nowait(sse.encode("step", {"steps": run.steps}))

    producer = asyncio.create_task(pump())
    ticking = asyncio.create_task(ticker())
    try:
        while (event := await events.get()) is not None:
            yield event
    finally:
        for t in (producer, ticking):
            t.cancel()  # the client left: cancel every pending LLM call
        await asyncio.gather(producer, ticking, return_exceptions=True)
        if dedup is not None:
            await asyncio.shield(dedup.drop())
        _count(state, plan, run)
