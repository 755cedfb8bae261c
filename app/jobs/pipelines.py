"""Pipelines as jobs (docs/api.md, "Pipelines"): the job engine's units are the input
rows, and a unit is a row's whole tree through the steps.

    planning   the API checks the pipeline and the rows exactly as POST /pipelines does,
               and stores the definition with every backend resolved and the seed
    running    a worker runs each unit's tree through app.pipelines.execute; after every
               step of every row it checkpoints the unit's tree (the rows still going, at
               the step they run next, and the final ones) together with that step's
               counters in the job's `steps`, in one script: a chunk resumed after a
               kill -9 runs no finished step again, and counts each step once
    storing    a unit's final rows are stored together when its tree is done (the SAVE
               script's exactly-once gate); `progress.completed` counts those units,
               `progress.failed` their rows with an error
    reading    results come sorted by id (`pipeline_results`)
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from llm_clients import LLMClient, Usage
from tasks import Registry

from .. import encoding
from ..errors import InvalidInput, SynthserveError
from ..pipelines import prepare
from ..pipelines.check import Plan, TaskPlan, build
from ..pipelines.dedup import DedupIndex
from ..pipelines.definition import parse
from ..pipelines.estimate import estimate
from ..pipelines.execute import USAGE_KEYS, Executor, Item, Outcome, all_or_none, empty_counts
from ..pipelines.run import clients, gated, sort_key
from . import keys
from .batched import BatchedScript
from .keys import LUA_NAMES, JobStatus
from .models import Chunk, Job, JobRequest, JobSpec, UnitResult, new_job_id, now_iso
from .queue import Submission
from .runner import WORKER_ERROR, JobSetupError, OnCheckpoint, OnUnit, run_chunk
from .runner import error_units as task_error_units

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from ..spend import Spend
    from ..state import AppState
    from .store import JobStore

RESULTS_BATCH = 500
COUNTERS = ("rows_in", "rows_out", "failed", "filtered")
WIDTH = len(COUNTERS) + len(USAGE_KEYS)  # a step's counters in a ledger (packed)
LEDGER = "t:"  # a unit's ledger: field "t:<unit>" of the job's inputs hash (keys.inputs)
_ID = re.compile(r'^\{"id":"([0-9.]+)"')

# KEYS: the job, its checkpoints, its inputs. ARGV: unit, the unit's tree (JSON), step name,
# that step's counters for this row (JSON), the unit's ledger ('' = the tree), the chunk's
# run. -> 0 when the job is no longer active, or runs again after a retry (nothing written). The ledger (Tree.ledger) outlives the
# checkpoint, which goes when the unit is stored or the job ends: POST /jobs/{id}/retry
# reads it (app.jobs.retry.plan_retry)
CHECKPOINT = LUA_NAMES + """
local status = redis.call('HGET', KEYS[1], F.status)
if status ~= S.queued and status ~= S.running then return 0 end
if (redis.call('HGET', KEYS[1], F.run) or '0') ~= ARGV[6] then return 0 end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
redis.call('HSET', KEYS[3], '""" + LEDGER + """' .. ARGV[1], ARGV[5] ~= '' and ARGV[5] or ARGV[2])
local steps = cjson.decode(redis.call('HGET', KEYS[1], F.steps) or '[]')
local d = cjson.decode(ARGV[4])
for _, pair in ipairs(steps) do
  if pair[1] == ARGV[3] then
    local c = pair[2]
    for _, k in ipairs({'rows_in', 'rows_out', 'failed', 'filtered'}) do c[k] = (c[k] or 0) + d[k] end
    for k, v in pairs(d.usage) do c.usage[k] = (c.usage[k] or 0) + v end
  end
end
redis.call('HSET', KEYS[1], F.steps, cjson.encode(steps))
return 1
"""


# ---- planning (the API) ----

def submission(plan: Plan, rows: list[dict[str, Any]], *, include_raw: bool, owner: str | None,
               chunk_units: int) -> Submission:
    n = len(rows)
    steps = [[p.step.name, empty_counts()] for p in plan.steps]
    job = Job(id=new_job_id(), task="", owner=owner, status=JobStatus.QUEUED, created_at=now_iso(), total=n,
              seed=plan.seed, pipeline=plan.name, steps=steps)
    spec = JobSpec(task=f"pipeline:{plan.name}", backend="", include_raw=include_raw, units_total=n, per_unit=1,
                   pipeline={"definition": stored_definition(plan), "seed": plan.seed})
    chunks = [list(range(i, min(i + chunk_units, n))) for i in range(0, n, chunk_units)]
    return Submission(job, spec, rows, chunks, time.time_ns() // 1000)


def stored_definition(plan: Plan) -> dict[str, Any]:
    """The definition with every step's backends named as the API resolved them (a worker's
    default backend may be another)."""
    data = plan.pipeline.model_dump(mode="json", exclude_none=True)
    for raw, p in zip(data["steps"], plan.steps):
        if isinstance(p, TaskPlan):
            if p.grouped:
                for spec, call in zip(raw["llms"], p.calls):
                    spec["backend"] = call.backend
            else:
                raw["llm"] = {**raw.get("llm", {}), "backend": p.calls[0].backend}
    return data


async def pipeline_job(state: AppState, req: JobRequest, owner: str | None) -> Submission | dict[str, Any]:
    """POST /jobs with `pipeline`: checked exactly as POST /pipelines (every 4xx before
    anything is queued), then planned; with `dry_run`, the estimate instead."""
    assert req.pipeline is not None

    def ready() -> tuple[Plan, list[dict[str, Any]]]:
        plan = prepare.plan(state, prepare.definition(state, req.pipeline), req.seed)
        return plan, prepare.rows_for(state, plan, req.rows)

    plan, rows = await asyncio.to_thread(ready)
    if req.dry_run:
        return await estimate(plan, rows)
    sub = submission(plan, rows, include_raw=req.include_raw, owner=owner,
                         chunk_units=state.settings.jobs.chunk_units)
    sub.spec.cache, sub.spec.max_cost_usd = req.cache, req.max_cost_usd
    return sub


# ---- running (a worker) ----

def packed(counts: dict[str, Any]) -> list[float]:
    """A step's counters as a ledger keeps them: rows_in, rows_out, failed, filtered, then usage."""
    u = counts["usage"]
    return [*(counts[k] for k in COUNTERS), *(u.get(k, 0) for k in USAGE_KEYS)]


def unpacked(values: list[float]) -> dict[str, Any]:
    values = [*values, *[0] * (WIDTH - len(values))]
    usage: dict[str, Any] = {k: int(v) for k, v in zip(USAGE_KEYS, values[len(COUNTERS):])}
    usage["cost_usd"] = round(float(values[len(COUNTERS) + USAGE_KEYS.index("cost_usd")]), 9)
    return {**{k: int(v) for k, v in zip(COUNTERS, values)}, "usage": usage}


def wanted(row_id: str, ids: list[str]) -> bool:
    """Is the row one of `ids`, or made of one of them (an explode of the same step)?"""
    return any(row_id == i or row_id.startswith(i + ".") for i in ids)


@dataclass
class Tree:
    """A unit's rows: those still going (by id) and the final ones, and the usage of every
    call made for it (rows filtered out included).

    For POST /jobs/{id}/retry the tree also keeps its ledger: `base` (the usage of earlier
    runs, already in the job's totals), `counts` (what it added to each step's counters),
    `redo` (each row that failed, as it entered the step it failed at: {"item", "ids": the
    failed rows it made, "whole": no other row of that step came of it}), `kept` (ids of the
    final rows stored by earlier runs) and `only` (a row put back by a retry whose step made
    rows that were fine: {id: {"step", "ids"}}, the rows of that step to go on with)."""

    going: dict[str, Item]
    final: list[Item] = field(default_factory=list)
    usage: Usage = field(default_factory=Usage)
    base: Usage = field(default_factory=Usage)
    counts: dict[str, list[float]] = field(default_factory=dict)
    redo: list[dict[str, Any]] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    only: dict[str, dict[str, Any]] = field(default_factory=dict)

    def dump(self) -> str:
        # app.encoding: rows hold answers, which may hold inf or lone surrogates
        return encoding.dumps({"going": [i.dump() for i in self.going.values()],
                               "final": [i.dump() for i in self.final], "usage": self.usage.as_dict(),
                               "base": self.base.as_dict(), "counts": self.counts, "redo": self.redo,
                               "kept": self.kept, "only": self.only}).decode()

    def ledger(self) -> str:
        """What the unit's ledger holds: '' (the tree itself) while rows are going; once the
        tree is done, all but its final rows, which the job's results hold (their ids)."""
        if self.going:
            return ""
        return encoding.dumps({"done": True, "ids": [*self.kept, *(i.id for i in self.final)],
                               "usage": self.usage.as_dict(), "base": self.base.as_dict(),
                               "counts": self.counts, "redo": self.redo}).decode()

    @classmethod
    def load(cls, data: dict[str, Any]) -> Tree:
        going = [Item.load(i) for i in data.get("going", [])]
        return cls({i.id: i for i in going}, [Item.load(i) for i in data.get("final", [])], Usage(**data["usage"]),
                   Usage(**data.get("base", {})), data.get("counts", {}), data.get("redo", []),
                   data.get("kept", []), data.get("only", {}))

    def count(self, step: str, counts: dict[str, Any]) -> None:
        mine = self.counts.setdefault(step, [0] * WIDTH)
        for i, v in enumerate(packed(counts)):
            mine[i] += v

    def resume(self, names: list[str]) -> None:
        """Put every row that failed back at the step it failed at, as it entered it, and
        take what it counted there off the step's counters (it counts again when it runs)."""
        failed: set[str] = set()
        for redo in self.redo:
            item, ids = Item.load(redo["item"]), redo["ids"]
            failed.update(ids)
            self.going[item.id] = item
            if not redo["whole"]:
                self.only[item.id] = {"step": item.step, "ids": ids}
            mine = self.counts.setdefault(names[item.step], [0] * WIDTH)
            mine[COUNTERS.index("rows_in")] -= 1 if redo["whole"] else 0
            mine[COUNTERS.index("failed")] -= len(ids)
        self.final = [i for i in self.final if i.id not in failed]
        self.kept = [i for i in self.kept if i not in failed]
        self.redo = []


@dataclass
class PipelineJob:
    """A pipeline job's spec resolved against this worker (the worker's JobRuntime)."""

    job_id: str
    spec: JobSpec
    executor: Executor
    redis: Redis
    started: bool = False
    run: int = 0  # the job's run when its spec was read (Field.RUN)
    checkpoints: BatchedScript = field(init=False)  # the CHECKPOINT script, a loop turn's calls at a time

    def __post_init__(self) -> None:
        self.checkpoints = BatchedScript(self.redis, CHECKPOINT)

    @classmethod
    def resolve(cls, job_id: str, spec: JobSpec, registry: Registry, backends: Mapping[str, LLMClient],
                store: JobStore, spend: Spend | None) -> PipelineJob:
        """Each step's clients: gated (later steps first), and with `spend` the job's cache
        (its identical calls numbered per row and step: Executor enters the unit) and budget."""
        assert spec.pipeline is not None

        def client_of(llm: LLMClient) -> Any:
            if spend is None:
                return llm
            return spend.job_client(llm, job_id, spec, lambda error: store.finish(job_id, JobStatus.CANCELLED, error))

        def backend_of(name: str | None) -> tuple[str, LLMClient]:
            client = backends.get(name or "")
            if client is None:
                raise InvalidInput(f"backend {name!r} is not configured on the worker")
            return name or "", client

        try:
            plan = build(parse(spec.pipeline["definition"]), registry, backend_of, seed=spec.pipeline["seed"])
        except SynthserveError as exc:
            raise JobSetupError(f"the worker rejects the pipeline: {exc.detail}") from None
        executor = Executor(plan, clients(plan, gated(client_of)), include_raw=spec.include_raw,
                            dedup=DedupIndex(store.redis, job_id, store.config.result_ttl_s))
        return cls(job_id, spec, executor, store.redis)

    async def run_unit(self, chunk: Chunk, unit: int, on_unit: OnUnit, checkpoint: Callable) -> None:
        saved = chunk.checkpoints.get(unit)
        tree = Tree.load(saved) if saved else Tree({str(unit): Item(str(unit), chunk.rows.get(unit, {}))})
        steps = self.executor.plan.steps
        n = len(steps)

        async def stepped(item: Item, outcome: Outcome) -> None:
            name = steps[item.step].step.name
            only = tree.only.get(item.id)
            if only is not None and only["step"] == item.step:
                # a row a retry put back (Tree.resume) whose step also made rows that were
                # fine and went on: only the others go on now (Executor.walk reads the outcome's
                # items once this returns)
                del tree.only[item.id]
                outcome.items[:] = [out for out in outcome.items if wanted(out.id, only["ids"])]
            else:
                only = None
            del tree.going[item.id]
            failed = []
            for out in outcome.items:
                if out.error is not None:
                    failed.append(out.id)
                if out.error is not None or out.step >= n:
                    tree.final.append(out)
                else:
                    tree.going[out.id] = out
            if failed:  # the row as it entered this step: where a retry starts it again
                tree.redo.append({"item": item.dump(), "ids": failed,
                                  "whole": only is None and len(failed) == len(outcome.items)})
            counts = outcome.counts()
            if only is not None:  # (the row was counted in when it first ran the step)
                counts["rows_in"] = 0
            tree.usage = tree.usage + outcome.usage
            tree.count(name, counts)
            # stored before the row's next call: what is paid for is never asked again
            await checkpoint(keys=[keys.job(self.job_id), keys.checkpoints(self.job_id), keys.inputs(self.job_id)],
                             args=[unit, tree.dump(), name, json.dumps(counts), tree.ledger(), chunk.run])

        await all_or_none(self.executor.walk(item, stepped, lambda _: None) for item in list(tree.going.values()))
        rows = [(None, item.final()) for item in sorted(tree.final, key=lambda i: sort_key(i.id))]
        u = tree.usage
        on_unit(UnitResult(unit, rows, (u.input_tokens, u.output_tokens), u.cost_usd, u.cached_calls))

    def error_units(self, chunk: Chunk, units: list[int], message: str) -> list[UnitResult]:
        """Units given up on (max_row_attempts): the input row, with the error."""
        error = {"type": WORKER_ERROR, "message": message, "step": None}
        return [UnitResult(u, [(None, {"id": str(u), **chunk.rows.get(u, {}), "metadata": {}, "error": error})])
                for u in units]


resolve = PipelineJob.resolve


async def run_units(rt: Any, chunk: Chunk, todo: list[int], on_unit: OnUnit, on_checkpoint: OnCheckpoint,
                    *, isolate: bool = False) -> None:
    """The worker's inner loop for either kind of job: a pipeline's units here (each checkpointed
    by this module's script), a task's by app.jobs.runner."""
    if not isinstance(rt, PipelineJob):
        return await run_chunk(rt, chunk, todo, on_unit, on_checkpoint, isolate=isolate)
    await all_or_none(rt.run_unit(chunk, unit, on_unit, rt.checkpoints) for unit in todo)


def error_units(rt: Any, chunk: Chunk, units: list[int], message: str) -> list[UnitResult]:
    if isinstance(rt, PipelineJob):
        return rt.error_units(chunk, units, message)
    return task_error_units(rt, chunk, units, message)


# ---- reading (the API) ----

def results_of(store: JobStore, job: Job) -> AsyncIterator[list[tuple[int, str]]]:
    """A job's stored rows in batches of (index, raw JSON): a pipeline's sorted by id."""
    return pipeline_results(store.results(job)) if job.pipeline is not None else store.results(job)


async def pipeline_results(batches: AsyncIterator[list[tuple[int, str]]]) -> AsyncIterator[list[tuple[int, str]]]:
    """A pipeline job's stored rows, sorted by id and numbered in that order. The rows are
    held as the raw JSON they are stored as (each starts with its id: Item.final)."""
    rows: list[tuple[tuple[int, ...], str]] = []
    async for batch in batches:
        for _, raw in batch:
            found = _ID.match(raw)
            rows.append((sort_key(found.group(1)) if found else (), raw))
    rows.sort(key=lambda r: r[0])
    for start in range(0, len(rows), RESULTS_BATCH):
        yield [(start + i, raw) for i, (_, raw) in enumerate(rows[start:start + RESULTS_BATCH])]
        await asyncio.sleep(0)
