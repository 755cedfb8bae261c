"""A pipeline request (for /pipelines or /jobs) made ready to run: the definition (a
name, or inline), its plan with the request's seed, and the rows checked; every 4xx
before any call. Blocking (files, compiling): call it off the event loop."""

from __future__ import annotations

import secrets
from typing import TYPE_CHECKING, Any

from ..encoding import NOT_FINITE, non_finite
from ..errors import InvalidInput, TooLarge
from ..runs import oversized
from . import catalog
from .check import Plan, build
from .definition import Pipeline, parse

if TYPE_CHECKING:
    from ..state import AppState

# columns an answer row already has: `id` is the pipeline's; `metadata` and `error` of an
# input row (a /tasks answer fed back in) belong to that earlier run and are dropped
RESERVED = "id"
DROPPED = ("metadata", "error")


def definition(state: AppState, ref: str | dict[str, Any]) -> Pipeline:
    """A pipeline by name (`[pipelines] dir`), or an inline definition."""
    if isinstance(ref, str):
        return catalog.get(state.settings, ref)
    return parse(ref)


def plan(state: AppState, pipeline: Pipeline, seed: int | None = None) -> Plan:
    limit = state.settings.server.max_field_chars
    where = oversized(pipeline.model_dump(mode="json"), "pipeline", limit)
    if where is not None:
        raise TooLarge(f"{where}: longer than max_field_chars ({limit} characters)")
    return build(pipeline, state.registry, state.backend, seed=secrets.randbelow(2**31) if seed is None else seed)


def rows_for(state: AppState, p: Plan, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The input rows, checked (413, 422 before any call) and without DROPPED columns."""
    server = state.settings.server
    if not rows:
        raise InvalidInput(f"rows: pipeline {p.name!r} needs at least one row with {p.inputs}")
    if len(rows) > server.max_rows_per_request:
        raise TooLarge(f"rows: {len(rows)} rows is more than max_rows_per_request ({server.max_rows_per_request})")
    where = oversized(rows, "rows", server.max_field_chars)
    if where is not None:
        raise TooLarge(f"{where}: longer than max_field_chars ({server.max_field_chars} characters)")
    where = non_finite(rows, "rows")
    if where is not None:
        raise InvalidInput(f"{where}: {NOT_FINITE}")
    for i, row in enumerate(rows):
        if isinstance(row, dict) and RESERVED in row:
            raise InvalidInput(f"rows[{i}].{RESERVED}: a pipeline names its rows `id`; rename this column")
    p.check_rows(rows)
    return [{k: v for k, v in row.items() if k not in DROPPED} for row in rows]
