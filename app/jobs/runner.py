"""Run one chunk of a job through the task (the worker's inner loop): `task.stream(run)`
over the chunk's units, rows grouped back into units
(the unit of exactly-once storage), checkpoints handed out as they are taken."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from llm_clients import GenerationKwargs, LLMClient, Usage
from tasks import Registry, Task, TaskParams, TaskRun

from .. import encoding
from .models import Chunk, JobSpec, UnitResult

WORKER_ERROR = "worker_error"

OnUnit = Callable[[UnitResult], None]
# (unit, JSON of all its step answers so far); what it returns is awaited before the
# task's next call, so that an answer is stored before more is spent
OnCheckpoint = Callable[[int, str], Awaitable[Any] | None]


class JobSetupError(Exception):
    """The job cannot run here at all (task or backend unknown to this process): the job
    fails with this message."""


@dataclass(slots=True)
class JobRuntime:
    """A job's spec resolved against this process: task, validated params, backend."""

    task: Task
    spec: JobSpec
    params: TaskParams
    llm: LLMClient
    kwargs: GenerationKwargs
    started: bool = False  # this worker has seen the job running (no need to mark it again)
    run: int = 0  # the job's run when its spec was read (Field.RUN)

    @classmethod
    def resolve(cls, spec: JobSpec, registry: Registry, backends: Mapping[str, LLMClient]) -> JobRuntime:
        task = registry.get(spec.task)
        if task is None:
            raise JobSetupError(f"task {spec.task!r} is not known to the worker")
        llm = backends.get(spec.backend)
        if llm is None:
            raise JobSetupError(f"backend {spec.backend!r} is not configured on the worker")
        try:
            params = task.Params.model_validate(spec.params)
            kwargs = GenerationKwargs.model_validate(spec.generation_kwargs)
        except ValueError as exc:
            raise JobSetupError(f"the worker rejects the job's params: {exc}") from None
        return cls(task, spec, params, llm, kwargs)

    def task_run(self, chunk: Chunk, units: list[int] | None, on_checkpoint=None) -> TaskRun:
        rows: list[dict[str, Any]] = []
        if self.spec.has_rows and chunk.rows:
            # Task.run_unit reads run.rows[unit]: a list as long as the job, with only this
            # chunk's rows filled in
            rows = [{}] * (max(chunk.rows) + 1)
            for unit, row in chunk.rows.items():
                rows[unit] = row
        return TaskRun(params=self.params, llm=self.llm, kwargs=self.kwargs, rows=rows, model=self.spec.model,
                       include_raw=self.spec.include_raw, checkpoints=chunk.checkpoints,
                       on_checkpoint=on_checkpoint, units=units)


async def run_chunk(rt: JobRuntime, chunk: Chunk, todo: list[int], on_unit: OnUnit,
                    on_checkpoint: OnCheckpoint, *, isolate: bool = False) -> None:
    """Run the units `todo` of `chunk`, calling `on_unit` as each unit's rows are all in.
    Raises what the task raises (a bug, not a row failure); units already handed to
    `on_unit` stay done. One stream runs the whole chunk, so a unit that raises cancels
    the others; `isolate` (for retries) gives each unit its own stream, so that only the
    units that keep raising are left over."""
    steps: dict[int, dict[str, Any]] = {u: dict(c) for u, c in chunk.checkpoints.items()}

    async def checkpoint(unit: int, step: str, value: Any) -> None:
        steps.setdefault(unit, {})[step] = value
        stored = on_checkpoint(unit, encoding.dumps(steps[unit]).decode())  # answers may hold lone surrogates
        if stored is not None:
            await stored

    if not isolate or rt.spec.whole or len(todo) == 1:
        return await _stream(rt, chunk, todo, on_unit, checkpoint)
    errors: list[Exception] = []

    async def one(unit: int) -> None:
        try:
            await _stream(rt, chunk, [unit], on_unit, checkpoint)
        except Exception as exc:
            errors.append(exc)

    await asyncio.gather(*(one(u) for u in todo))
    if errors:
        raise errors[0]


async def _stream(rt: JobRuntime, chunk: Chunk, todo: list[int], on_unit: OnUnit,
                  checkpoint: Callable[[int, str, Any], Awaitable[None]]) -> None:
    k = rt.spec.per_unit
    # a varying number of rows per unit: the chunk is one unit, stored when the stream ends
    variable = k is None
    run = rt.task_run(chunk, None if variable and rt.spec.whole else todo, checkpoint)
    seen = Usage()

    def result(unit: int, rows: list[tuple[int | None, dict[str, Any]]]) -> UnitResult:
        # A unit's usage is what its rows report: every row of a unit carries the unit's
        # calls (rows of a whole-stream task each carry their own). The run's running total
        # is the fallback; it cannot tell apart units that finish together.
        nonlocal seen
        spent = (run.usage.input_tokens - seen.input_tokens, run.usage.output_tokens - seen.output_tokens)
        cost, cached = run.usage.cost_usd - seen.cost_usd, run.usage.cached_calls - seen.cached_calls
        seen = run.usage
        reported = [row.get("metadata", {}).get("usage") for _, row in rows]
        if rows and all(isinstance(u, dict) for u in reported):
            counted = reported if rt.spec.whole else reported[:1]
            spent = (sum(u.get("input_tokens", 0) for u in counted), sum(u.get("output_tokens", 0) for u in counted))
            cost = sum(u.get("cost_usd", 0.0) for u in counted)
            cached = sum(u.get("cached_calls", 0) for u in counted)
        return UnitResult(unit, rows, spent, cost, cached)

    pending: dict[int, list[tuple[int | None, dict[str, Any]]]] = {}
    async for index, row in rt.task.stream(run):
        if k is None:  # variable
            pending.setdefault(todo[0], []).append((None, row))
            continue
        unit = index // k
        rows = pending.setdefault(unit, [])
        rows.append((index, row))
        if len(rows) == k:
            del pending[unit]
            on_unit(result(unit, rows))
    for unit, rows in pending.items():  # a variable unit, or a task that yielded fewer rows than declared
        on_unit(result(unit, rows))
    if variable and not pending:  # the unit produced no rows at all: still done
        on_unit(result(todo[0], []))


def error_units(rt: JobRuntime, chunk: Chunk, units: list[int], message: str) -> list[UnitResult]:
    """Rows for units given up on (max_row_attempts): inputs kept, outputs null, the error."""
    run = rt.task_run(chunk, units)
    error = {"type": WORKER_ERROR, "message": message}
    k = rt.spec.per_unit or 1
    out = []
    for unit in units:
        row = chunk.rows.get(unit, {})
        ctx = run.context(unit)
        out.append(UnitResult(unit, [(unit * k + j, rt.task.build_row(row, {}, ctx, error, run)) for j in range(k)]))
    return out
