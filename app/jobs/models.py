"""The job object (API.md, "Jobs"), what a worker needs to run one (JobSpec), the request
body, and the small records that move between runner, store and routes."""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from tasks.base import Split

from ..schemas import LLMSpec
from .keys import TERMINAL, Field as F, Fields, JobStatus


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def new_job_id() -> str:
    return f"job_{secrets.token_hex(12)}"


class JobRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    task: str | None = Field(None, description="A task name from GET /tasks (or give `pipeline`).")
    pipeline: str | dict[str, Any] | None = Field(None, description=(
        "Instead of `task`: a pipeline name from GET /pipelines, or a definition {name, steps} (docs/pipelines.md)."))
    seed: int | None = Field(None, ge=0, description="A pipeline job's seed (a task job takes `params.seed`).")

    @model_validator(mode="after")
    def _task_or_pipeline(self) -> JobRequest:
        if (self.task is None) == (self.pipeline is None):
            raise ValueError("give `task` or `pipeline`")
        if self.pipeline is not None and (self.params or self.llm.model_fields_set):
            raise ValueError("a pipeline job takes no `params` or `llm`: its steps have their own")
        if self.task is not None and self.seed is not None:
            raise ValueError("a task job takes its seed in `params.seed`")
        return self

    rows: list[dict[str, Any]] = Field(default_factory=list,
                                       description="Input rows; absent or empty for generator tasks.")
    params: dict[str, Any] = Field(default_factory=dict, description="The task's params (see `params_schema`); "
                                   "without `seed` the server draws one (returned in the job object).")
    llm: LLMSpec = LLMSpec()
    include_raw: bool = Field(True, description="Keep `metadata.raw_input` and `raw_output`.")
    cache: bool | Literal["refresh"] = Field(True, description=(
        "The LLM-call cache: `false` neither reads nor writes it, `\"refresh\"` calls again and overwrites."))
    dry_run: bool = Field(False, description=(
        "Answer 200 and an estimate `{calls, input_tokens, max_output_tokens, cost_usd}` instead; no job, no call."))
    max_cost_usd: float | None = Field(None, gt=0, allow_inf_nan=False, description=(
        "Once the job's calls cost this much, no new call starts: the job ends `cancelled`, `error` says why."))


class ProgressOut(BaseModel):
    total: int = Field(description="Rows the job will produce (for generators: the rows asked for).")
    completed: int = Field(description="Rows finished without an error.")
    failed: int = Field(description="Rows finished with a row `error`.")


class PipelineProgressOut(ProgressOut):
    """A pipeline job's: `total` counts input rows, `completed` those whose whole tree is
    done, `failed` final rows with an error."""

    steps: dict[str, Any] = Field(description="Per step: {rows_in, rows_out, failed, filtered, usage}.")


class JobUsageOut(BaseModel):
    """A job's usage: that of its stored rows."""

    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = Field(0.0, description="At the backend's prices; answers from the cache cost nothing.")
    cached_calls: int = Field(0, description="Calls answered from the LLM-call cache.")


class JobOut(BaseModel):
    id: str
    task: str | None
    pipeline: str | None = Field(None, description="The pipeline a pipeline job runs (its `task` is null).")
    status: JobStatus
    created_at: str
    started_at: str | None
    finished_at: str | None
    progress: PipelineProgressOut | ProgressOut  # (smart union: `steps` only where there are steps)
    usage: JobUsageOut
    error: str | None = Field(description="Why a `failed` job could not run.")
    seed: int | None = Field(None, description="The seed the job runs with (drawn by the server when not given).")


class JobList(BaseModel):
    jobs: list[JobOut]


class JobSpec(BaseModel):
    """Everything a worker needs besides the rows; stored with the job. `split` is the
    task's (Task.split); `per_unit` its rows per unit (None: it varies, one unit per chunk)."""

    task: str
    backend: str
    model: str | None = None
    generation_kwargs: dict[str, Any] = Field(default_factory=dict)
    params: dict[str, Any] = Field(default_factory=dict)
    include_raw: bool = True
    pipeline: dict[str, Any] | None = None  # a pipeline job: {definition, seed} (app.jobs.pipelines)
    units_total: int
    per_unit: int | None = 1
    split: Split = "rows"
    has_rows: bool = True  # False for generators: no input rows travel with the chunks
    cache: bool | Literal["refresh"] = True  # the LLM-call cache (llm_clients.cache)
    max_cost_usd: float | None = None  # the budget of the job's calls (app.spend.JobBudget)

    @property
    def whole(self) -> bool:
        return self.split == "whole"


@dataclass(slots=True)
class Job:
    id: str
    task: str
    owner: str | None
    status: JobStatus
    created_at: str
    total: int
    started_at: str | None = None
    finished_at: str | None = None
    completed: int = 0
    failed: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    cached_calls: int = 0
    error: str | None = None
    seed: int | None = None
    pipeline: str | None = None
    steps: list[list[Any]] | None = None  # a pipeline job's [[step name, counters], ...]

    def public(self) -> dict[str, Any]:
        progress: dict[str, Any] = {"total": self.total, "completed": self.completed, "failed": self.failed}
        if self.pipeline is not None:
            progress["steps"] = {name: counts for name, counts in self.steps or []}
        return {"id": self.id, "task": self.task or None, "pipeline": self.pipeline, "status": str(self.status),
                "created_at": self.created_at, "started_at": self.started_at, "finished_at": self.finished_at,
                "progress": progress,
                "usage": {"input_tokens": self.input_tokens, "output_tokens": self.output_tokens,
                          "cost_usd": round(self.cost_usd, 9), "cached_calls": self.cached_calls},
                "error": self.error, "seed": self.seed}

    @property
    def finished(self) -> bool:
        return self.status in TERMINAL

    # ---- as a Redis hash (strings; "" for None) ----

    def to_fields(self) -> Fields:
        return {F.ID: self.id, F.TASK: self.task, F.OWNER: self.owner or "", F.STATUS: self.status,
                F.CREATED_AT: self.created_at, F.STARTED_AT: self.started_at or "",
                F.FINISHED_AT: self.finished_at or "", F.TOTAL: str(self.total),
                F.COMPLETED: str(self.completed), F.FAILED: str(self.failed),
                F.INPUT_TOKENS: str(self.input_tokens), F.OUTPUT_TOKENS: str(self.output_tokens),
                F.COST_USD: repr(self.cost_usd), F.CACHED_CALLS: str(self.cached_calls),
                F.ERROR: self.error or "", F.SEED: "" if self.seed is None else str(self.seed),
                F.PIPELINE: self.pipeline or "", F.STEPS: "" if self.steps is None else json.dumps(self.steps)}

    @classmethod
    def from_fields(cls, f: dict[str, str]) -> Job:
        seed = f.get(F.SEED)
        return cls(id=f[F.ID], task=f[F.TASK], owner=f.get(F.OWNER) or None, status=JobStatus(f[F.STATUS]),
                   created_at=f[F.CREATED_AT], total=int(f.get(F.TOTAL) or 0),
                   seed=int(seed) if seed else None, pipeline=f.get(F.PIPELINE) or None).with_fields(f)

    def with_fields(self, f: dict[str, str]) -> Job:
        """This job with the SNAPSHOT fields of `f` (a hash or an event) laid over."""
        return replace(
            self, status=JobStatus(f.get(F.STATUS) or self.status), total=int(f.get(F.TOTAL) or self.total),
            completed=int(f.get(F.COMPLETED) or 0), failed=int(f.get(F.FAILED) or 0),
            input_tokens=int(f.get(F.INPUT_TOKENS) or 0), output_tokens=int(f.get(F.OUTPUT_TOKENS) or 0),
            cost_usd=float(f.get(F.COST_USD) or 0), cached_calls=int(f.get(F.CACHED_CALLS) or 0),
            started_at=f.get(F.STARTED_AT) or None, finished_at=f.get(F.FINISHED_AT) or None,
            error=f.get(F.ERROR) or None, steps=json.loads(f[F.STEPS]) if f.get(F.STEPS) else self.steps)


@dataclass(slots=True)
class UnitResult:
    """The output rows of one finished unit, as (index, row); index None = the store
    assigns the next free one (tasks whose rows per unit vary)."""

    unit: int
    rows: list[tuple[int | None, dict[str, Any]]]
    usage: tuple[int, int] = (0, 0)  # (input, output) tokens of the unit's calls
    cost_usd: float = 0.0  # what they cost
    cached_calls: int = 0  # of them answered from the call cache


@dataclass(slots=True)
class Chunk:
    """A piece of a job handed to a worker: which units, their input rows and checkpoints."""

    job_id: str
    units: list[int]
    rows: dict[int, dict[str, Any]] = field(default_factory=dict)
    checkpoints: dict[int, dict[str, Any]] = field(default_factory=dict)
    attempt: int = 1
    run: int = 0  # the job's run it belongs to (Entry.RUN)
