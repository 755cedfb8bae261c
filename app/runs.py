"""Turn a request (for /tasks or /jobs) into a validated TaskRun: everything is checked
here, before any LLM call, and every problem is a 4xx naming what is wrong. Narrow on
purpose: the task and the backend's client come resolved (AppState.task, .backend)."""

from __future__ import annotations

from typing import Any, Protocol

from pydantic import ValidationError

from llm_clients import LLMClient
from tasks import InputError, RowError, Task, TaskRun

from .encoding import NOT_FINITE, first_path, non_finite
from .errors import InvalidInput, TooLarge
from .schemas import LLMSpec


class RunRequest(Protocol):
    """What build_run reads of a request body (TaskRequest, JobRequest)."""

    rows: list[dict[str, Any]]
    params: dict[str, Any]
    llm: LLMSpec
    include_raw: bool


def format_validation_error(prefix: str, exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in err["loc"])
        parts.append(f"{prefix}{loc}: {err['msg']}")
    return "; ".join(parts)


def oversized(value: Any, path: str, limit: int) -> str | None:
    """The path of the first string in `value` longer than `limit` characters, or None."""
    return first_path(value, path, lambda item: isinstance(item, str) and len(item) > limit)


def build_run(task: Task, client: LLMClient, req: RunRequest, *, max_rows: int,
              max_output_rows: int | None = None, max_field_chars: int | None = None) -> TaskRun:
    if max_field_chars is not None:
        where = oversized(req.params, "params", max_field_chars) or oversized(req.rows, "rows", max_field_chars)
        if where is not None:
            raise TooLarge(f"{where}: longer than max_field_chars ({max_field_chars} characters)")
    where = (non_finite(req.params, "params") or non_finite(req.rows, "rows")  # 1e999 parsed to inf
             or non_finite(req.llm.generation_kwargs.given(), "llm.generation_kwargs"))
    if where is not None:
        raise InvalidInput(f"{where}: {NOT_FINITE}")
    try:
        p = task.Params.model_validate(req.params)
    except ValidationError as exc:
        raise InvalidInput(format_validation_error("params", exc)) from None
    try:
        task.check(p, client)
    except InputError as exc:
        raise InvalidInput(str(exc)) from None
    rows = req.rows
    if task.generator:
        if rows:
            raise InvalidInput(f"rows: task {task.name!r} is a generator and takes no rows")
        if task.num_units(p, rows) * (task.rows_per_unit(p) or 1) > max_rows:
            raise TooLarge(f"params: asks for more than max_rows_per_request ({max_rows}) rows")
    else:
        if not rows:
            raise InvalidInput(f"rows: task {task.name!r} needs at least one row with {list(task.inputs)}")
        if len(rows) > max_rows:
            raise TooLarge(f"rows: {len(rows)} rows is more than max_rows_per_request ({max_rows})")
        per_row = task.rows_per_unit(p) or 1
        if max_output_rows is not None and len(rows) * per_row > max_output_rows:
            factor = "num_generations" if hasattr(p, "num_generations") else "rows per input row"
            raise TooLarge(f"rows x {factor}: {len(rows)} x {per_row} = {len(rows) * per_row} output rows is more "
                           f"than max_output_rows_per_request ({max_output_rows})")
        for i, row in enumerate(rows):
            try:
                task.check_row(row, p)
            except RowError as exc:
                raise InvalidInput(f"rows[{i}].{exc.field}: {exc}") from None
            except InputError as exc:
                raise InvalidInput(f"rows[{i}]: {exc}") from None
    return TaskRun(params=p, llm=client, kwargs=req.llm.generation_kwargs, rows=rows, model=req.llm.model,
                   include_raw=req.include_raw)
