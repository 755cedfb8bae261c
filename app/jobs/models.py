"""The job object (API.md, "Jobs"), what a worker needs to run one (JobSpec), the request
body, and the small records that move between runner, stores and routes."""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ..schemas import LLMSpec

QUEUED, RUNNING, COMPLETED, FAILED, CANCELLED = "queued", "running", "completed", "failed", "cancelled"
ACTIVE = frozenset({QUEUED, RUNNING})
TERMINAL = frozenset({COMPLETED, FAILED, CANCELLED})
PROGRESS_INTERVAL_MS = 500  # progress events at most this often (API.md)

# Fields of the job hash that change while it runs; progress/done events carry a snapshot.
MUTABLE = ("status", "total", "completed", "failed", "input_tokens", "output_tokens",
           "started_at", "finished_at", "error")


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def new_job_id() -> str:
    return f"job_{secrets.token_hex(12)}"


class JobRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    task: str = Field(description="A task name from GET /tasks.")
    rows: list[dict[str, Any]] = Field(default_factory=list,
                                       description="Input rows; absent or empty for generator tasks.")
    params: dict[str, Any] = Field(default_factory=dict, description="The task's params (see `params_schema`).")
    llm: LLMSpec = LLMSpec()
    include_raw: bool = Field(True, description="Keep `metadata.raw_input` and `raw_output`.")


class ProgressOut(BaseModel):
    total: int = Field(description="Rows the job will produce (for generators: the rows asked for).")
    completed: int = Field(description="Rows finished without an error.")
    failed: int = Field(description="Rows finished with a row `error`.")


class UsageOut(BaseModel):
    input_tokens: int = 0
    output_tokens: int = 0


class JobOut(BaseModel):
    id: str
    task: str
    status: Literal["queued", "running", "completed", "failed", "cancelled"]
    created_at: str
    started_at: str | None
    finished_at: str | None
    progress: ProgressOut
    usage: UsageOut
    error: str | None = Field(description="Why a `failed` job could not run.")


class JobList(BaseModel):
    jobs: list[JobOut]


class JobSpec(BaseModel):
    """Everything a worker needs besides the rows; stored with the job. `per_unit` is the
    task's rows per unit (None: it varies, one unit per chunk); `whole` marks tasks that
    override `Task.stream` (evol generators): one chunk holding every unit."""

    task: str
    backend: str
    model: str | None = None
    generation_kwargs: dict[str, Any] = Field(default_factory=dict)
    params: dict[str, Any] = Field(default_factory=dict)
    include_raw: bool = True
    units_total: int
    per_unit: int | None = 1
    whole: bool = False
    has_rows: bool = True


@dataclass(slots=True)
class Job:
    id: str
    task: str
    owner: str | None
    status: str
    created_at: str
    total: int
    started_at: str | None = None
    finished_at: str | None = None
    completed: int = 0
    failed: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    error: str | None = None

    def public(self) -> dict[str, Any]:
        return {"id": self.id, "task": self.task, "status": self.status, "created_at": self.created_at,
                "started_at": self.started_at, "finished_at": self.finished_at,
                "progress": {"total": self.total, "completed": self.completed, "failed": self.failed},
                "usage": {"input_tokens": self.input_tokens, "output_tokens": self.output_tokens},
                "error": self.error}

    @property
    def finished(self) -> bool:
        return self.status in TERMINAL

    # ---- as a Redis hash (strings; "" for None) ----

    def to_fields(self) -> dict[str, str]:
        return {"id": self.id, "task": self.task, "owner": self.owner or "", "status": self.status,
                "created_at": self.created_at, "started_at": self.started_at or "",
                "finished_at": self.finished_at or "", "total": str(self.total),
                "completed": str(self.completed), "failed": str(self.failed),
                "input_tokens": str(self.input_tokens), "output_tokens": str(self.output_tokens),
                "error": self.error or ""}

    @classmethod
    def from_fields(cls, f: dict[str, str]) -> Job:
        return cls(id=f["id"], task=f["task"], owner=f.get("owner") or None, status=f["status"],
                   created_at=f["created_at"], total=int(f.get("total") or 0)).with_fields(f)

    def with_fields(self, f: dict[str, str]) -> Job:
        """This job with the mutable fields of `f` (a hash or an event snapshot) laid over."""
        return replace(
            self, status=f.get("status") or self.status, total=int(f.get("total") or self.total),
            completed=int(f.get("completed") or 0), failed=int(f.get("failed") or 0),
            input_tokens=int(f.get("input_tokens") or 0), output_tokens=int(f.get("output_tokens") or 0),
            started_at=f.get("started_at") or None, finished_at=f.get("finished_at") or None,
            error=f.get("error") or None)


@dataclass(slots=True)
class Event:
    """One entry of a job's event log. `seq` is the SSE id (1, 2, ...); a `row` event names
    the output index, `progress` and `done` carry the job as it was."""

    seq: int
    kind: str
    index: int | None = None
    job: Job | None = None


@dataclass(slots=True)
class UnitResult:
    """The output rows of one finished unit, as (index, row); index None = the store
    assigns the next free one (tasks whose rows per unit vary)."""

    unit: int
    rows: list[tuple[int | None, dict[str, Any]]]
    usage: tuple[int, int] = (0, 0)  # (input, output) tokens of the unit's calls

    @property
    def failed(self) -> int:
        return sum(row.get("error") is not None for _, row in self.rows)


@dataclass(slots=True)
class Chunk:
    """A piece of a job handed to a worker: which units, their input rows and checkpoints."""

    job_id: str
    units: list[int]
    rows: dict[int, dict[str, Any]] = field(default_factory=dict)
    checkpoints: dict[int, dict[str, Any]] = field(default_factory=dict)
    attempt: int = 1
