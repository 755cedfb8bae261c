"""Turn a request (for /tasks or /jobs) into a validated TaskRun: everything is checked
here, before any LLM call, and every problem is a 4xx naming what is wrong."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from tasks import RowError, Task, TaskRun

from .errors import InvalidInput, NotFound, TooLarge
from .schemas import LLMSpec
from .state import AppState


def format_validation_error(prefix: str, exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in err["loc"])
        parts.append(f"{prefix}{loc}: {err['msg']}")
    return "; ".join(parts)


def get_task(state: AppState, name: str) -> Task:
    task = state.registry.get(name)
    if task is None:
        raise NotFound(f"unknown task {name!r}; see GET /tasks")
    return task


def build_run(state: AppState, task_name: str, rows: list[dict[str, Any]], params: dict[str, Any],
              llm: LLMSpec, include_raw: bool = True) -> tuple[Task, TaskRun]:
    task = get_task(state, task_name)
    backend = llm.backend or state.settings.llm.default_backend
    client = state.backends.get(backend)
    if client is None:
        raise InvalidInput(f"llm.backend: unknown backend {backend!r}; configured: {sorted(state.backends)}")
    try:
        p = task.Params.model_validate(params)
    except ValidationError as exc:
        raise InvalidInput(format_validation_error("params", exc)) from None
    try:
        task.check(p, client)
    except ValueError as exc:
        raise InvalidInput(str(exc)) from None

    limit = state.settings.server.max_rows_per_request
    if task.generator:
        if rows:
            raise InvalidInput(f"rows: task {task.name!r} is a generator and takes no rows")
        if task.num_units(p, rows) * (task.rows_per_unit(p) or 1) > limit:
            raise TooLarge(f"params: asks for more than max_rows_per_request ({limit}) rows")
    else:
        if not rows:
            raise InvalidInput(f"rows: task {task.name!r} needs at least one row with {list(task.inputs)}")
        if len(rows) > limit:
            raise TooLarge(f"rows: {len(rows)} rows is more than max_rows_per_request ({limit})")
        for i, row in enumerate(rows):
            try:
                task.check_row(row, p)
            except RowError as exc:
                raise InvalidInput(f"rows[{i}].{exc.field}: {exc}") from None
            except ValueError as exc:
                raise InvalidInput(f"rows[{i}]: {exc}") from None
    run = TaskRun(params=p, llm=client, kwargs=llm.generation_kwargs, rows=rows, model=llm.model,
                  include_raw=include_raw)
    return task, run
