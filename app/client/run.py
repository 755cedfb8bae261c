"""`synthserve run`: a task or pipeline over a file, against a server (as a job) or in
process, into an output file that a second run resumes (docs/api.md, "Files in and out,
CLI, web page, CORS")."""

from __future__ import annotations

import asyncio
import gc
import re
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console

from .. import formats, heap
from .http import Server, ServerError
from .output import OutputFile
from .progress import Counts, ProgressDisplay

OK, SOME_FAILED, BAD_ARGS, INTERRUPTED = 0, 1, 2, 130
UPLOAD_NAME = "rows.jsonl"  # the rows go to POST /jobs as this file (multipart)


class UsageError(Exception):
    """Bad arguments or inputs: exit status 2."""


@dataclass(slots=True)
class RunSpec:
    name: str | None
    output: OutputFile
    rows: list[dict[str, Any]] = field(default_factory=list)
    params: dict[str, Any] = field(default_factory=dict)
    llm: dict[str, Any] = field(default_factory=dict)
    include_raw: bool = True
    cache: bool | None = None


@dataclass(slots=True)
class Plan:
    """Which units run now: `units` (None = all, numbered as the server numbers them) and
    the rows per unit, to put each result row at its place in the whole output."""

    units: list[int] | None
    per_unit: int | None

    def renumbered(self, exc: ServerError) -> ServerError:
        """The server's place of a bad row (`file: rows.jsonl line k+1: ` of the rows sent)
        as the input's row: `rows[i].`."""
        if not isinstance(exc.detail, str):
            return exc
        detail = re.sub(rf"file: {re.escape(UPLOAD_NAME)} line (\d+): ",
                        lambda m: f"rows[{self.original(int(m.group(1)) - 1)}].", exc.detail)
        detail = re.sub(r"\brows\[(\d+)\]", lambda m: f"rows[{self.original(int(m.group(1)))}]", detail) \
            if detail == exc.detail else detail  # a JSON body's (pipelines)
        return ServerError(exc.status, detail)

    def original(self, k: int) -> int:
        return self.units[k] if self.units is not None and k < len(self.units) else k

    def full_id(self, row_id: str) -> str:
        """A pipeline row's id ("k" or "k.j", k of the rows sent) over the whole input."""
        root, dot, rest = row_id.partition(".")
        return f"{self.original(int(root))}{dot}{rest}"

    def full_index(self, index: int) -> int:
        if self.units is None or not self.per_unit:
            return index
        unit, sub = divmod(index, self.per_unit)
        return self.units[unit] * self.per_unit + sub


def plan(out: OutputFile, n_units: int | None, per_unit: int | None, *, subset: bool, console: Console) -> Plan:
    """Skip the units already in the output; start over when this run cannot take a subset."""
    if per_unit and n_units is not None:
        done = out.done_units(per_unit)
        pending = [u for u in range(n_units) if u not in done]
        if subset:
            if done:
                console.print(f"resuming: {len(done)} of {n_units} rows already in {out.path}", highlight=False)
            return Plan(pending, per_unit)
        if not pending:
            return Plan([], per_unit)
    if out.rows:
        console.print(f"this run cannot resume part of its rows: starting {out.path} over", highlight=False)
        out.clear()
    return Plan(None, per_unit)


def plan_pipeline(out: OutputFile, n_rows: int, console: Console) -> Plan:
    """Skip the input rows whose pipeline rows are all in the output; drop the others' rows."""
    if any(isinstance(key, int) for key in out.rows):  # not a pipeline's output
        out.clear()
    if not out.rows:
        return Plan(None, None)
    done = out.done_inputs()
    pending = [u for u in range(n_rows) if u not in done]
    out.drop_inputs(set(pending))
    console.print(f"resuming: {n_rows - len(pending)} of {n_rows} input rows already in {out.path}", highlight=False)
    return Plan(pending, None)


def unit_shape(name: str, params: dict[str, Any], n_rows: int) -> tuple[int | None, int | None, bool]:
    """(units, rows per unit, whether a subset of rows can be sent) for a task known to this
    package, cut as the server cuts it; file-defined tasks and pipelines are not known here."""
    from pydantic import ValidationError
    from tasks import Registry  # (0.2-0.3 s: only on a resume, or for a generator task)

    task = Registry.builtin().get(name)
    if task is None:
        return None, None, False
    try:
        p = task.Params.model_validate(params)
    except ValidationError:
        return None, None, False  # the server says what is wrong
    return task.num_units(p, []) if task.generator else n_rows, task.rows_per_unit(p), not task.generator


def counts_of(job: dict[str, Any], skipped: int) -> Counts:
    usage = job.get("usage") or {}
    progress = job["progress"]
    return Counts(total=skipped + progress["total"], done=skipped + progress["completed"] + progress["failed"],
                  failed=progress["failed"], tokens=usage.get("input_tokens", 0) + usage.get("output_tokens", 0),
                  cost_usd=usage.get("cost_usd"))


def exit_status(out: OutputFile, console: Console) -> int:
    console.print(f"wrote {len(out.rows)} rows to {out.path} ({out.failed} failed)", highlight=False)
    return SOME_FAILED if out.failed else OK


# ---- against a server ----

async def run_on_server(spec: RunSpec, server: Server, console: Console, kind: str | None = None) -> int:
    """`kind`: what `spec.name` is on the server (`task` or `pipeline`), when already asked."""
    out = spec.output
    job: dict[str, Any] | None = None
    if kind is None and spec.rows and not out.rows:
        # nothing to resume: the rows go at once, as a task's file; what NAME is, is asked
        # only when the server has no task of that name (a pipeline, or nothing at all)
        p, skipped = Plan(None, None), 0
        try:
            job = await submit(server, spec, "task", spec.rows, p)
        except ServerError as exc:
            if exc.status != 404 or await server.kind(spec.name) == "task":
                raise
            kind = "pipeline"
    if job is None:
        kind = kind or await server.kind(spec.name)
        if kind == "task" and spec.rows and not out.rows:  # nothing to resume: every row goes
            p, skipped = Plan(None, None), 0
        elif kind == "task":
            n_units, per_unit, subset = unit_shape(spec.name, spec.params, len(spec.rows))
            p = plan(out, n_units, per_unit, subset=subset, console=console)
            skipped = len(out.rows)
        else:  # progress counts a pipeline's input rows
            p = plan_pipeline(out, len(spec.rows), console)
            skipped = 0 if p.units is None else len(spec.rows) - len(p.units)
        if p.units == []:
            console.print(f"nothing to do: every row is already in {out.path}", highlight=False)
            return exit_status(out, console)
        job = await submit(server, spec, kind, spec.rows if p.units is None else [spec.rows[u] for u in p.units], p)
    header = {"job": job["id"], "units": p.units, "per_unit": p.per_unit, "skipped": skipped}
    console.print(f"job {job['id']} submitted to {server.http.base_url}", highlight=False)
    return await follow(server, job, out, header, console)


async def submit(server: Server, spec: RunSpec, kind: str, rows: list[dict[str, Any]], p: Plan) -> dict[str, Any]:
    """POST /jobs: a task's rows as a file (no JSON body limit, queued a batch at a time), a
    pipeline's in the JSON body; the server's place of a bad row renumbered as the input's."""
    body: dict[str, Any] = {kind: spec.name, "params": spec.params, "llm": spec.llm, "include_raw": spec.include_raw}
    if spec.cache is not None:
        body["cache"] = spec.cache
    try:
        if kind == "task" and rows:
            return await server.submit_file(body, UPLOAD_NAME, formats.jsonl_text(rows).encode())
        return await server.submit({**body, "rows": rows} if rows else body)
    except ServerError as exc:
        raise p.renumbered(exc) from None


async def reattach(job_id: str, out: OutputFile, server: Server, console: Console) -> int:
    """Follow a job started by an earlier `synthserve run` (its journal maps the job's rows
    to the output's), or any job (its rows as they are numbered)."""
    job = await server.job(job_id)
    header = out.header if out.header.get("job") == job_id else {"job": job_id, "units": None, "per_unit": None}
    return await follow(server, job, out, {**header, "skipped": header.get("skipped", 0)}, console)


async def follow(server: Server, job: dict[str, Any], out: OutputFile, header: dict[str, Any],
                 console: Console) -> int:
    # the job is in: the input rows and the output's rows so far live as long as the run
    # (command_run turned the collector off until here, to keep it off the way to the submission)
    heap.settle()
    gc.enable()
    p = Plan(header["units"], header["per_unit"])
    pipeline = bool(job.get("pipeline"))
    out.start(header)
    display = ProgressDisplay(job["id"], counts_of(job, header["skipped"]), console=console)
    try:
        async for event, data in server.events(job["id"]):
            if event == "row" and pipeline:
                key = p.full_id(data["row"]["id"])
                out.add(key, {**data["row"], "id": key})
            elif event == "row":
                out.add(p.full_index(data["index"]), data["row"])
            elif event in ("progress", "done"):
                job = data
                display.update(counts_of(job, header["skipped"]))
    finally:
        display.close()
    if job["status"] != "completed":
        console.print(f"job {job['id']} {job['status']}" + (f": {job['error']}" if job.get("error") else ""),
                      highlight=False)
    out.finish()
    status = exit_status(out, console)
    return status if job["status"] == "completed" else SOME_FAILED


# ---- in process ----

async def run_in_process(spec: RunSpec, settings, console: Console) -> int:
    from pydantic import ValidationError  # (pydantic, ~0.05 s: not on a server run's start)

    from ..errors import NotFound, SynthserveError
    from ..schemas import LLMSpec, TaskRequest
    from ..state import AppState

    out = spec.output
    state = AppState.build(settings)
    try:
        task, run = state.prepare_run(spec.name, TaskRequest(rows=spec.rows, params=spec.params,
                                                              llm=LLMSpec.model_validate(spec.llm),
                                                              include_raw=spec.include_raw))
    except NotFound as exc:  # pipelines need the jobs' Redis (dedup index, checkpoints): a server's
        raise UsageError(f"{exc.detail}; a pipeline runs on a server (--server URL)") from None
    except SynthserveError as exc:
        raise UsageError(exc.detail) from None
    except ValidationError as exc:
        raise UsageError(f"--llm: {exc}") from None
    per_unit = task.rows_per_unit(run.params)
    p = plan(out, task.num_units(run.params, run.rows), per_unit, subset=task.split != "whole", console=console)
    if p.units == []:
        console.print(f"nothing to do: every row is already in {out.path}", highlight=False)
        return exit_status(out, console)
    run.units = p.units
    skipped = len(out.rows)
    n_units = len(p.units) if p.units is not None else task.num_units(run.params, run.rows)
    counts = Counts(total=skipped + n_units * (per_unit or 1), done=skipped)
    console.print(f"starting backend {run.llm.name} ({run.llm.provider})", highlight=False)
    out.start()
    await run.llm.start()
    display = ProgressDisplay(task.name, counts, console=console)
    try:
        async for index, row in task.stream(run):
            out.add(index, row)
            counts.done += 1
            counts.failed += row.get("error") is not None
            usage = run.usage.as_dict()
            counts.tokens = usage["input_tokens"] + usage["output_tokens"]
            counts.cost_usd = usage.get("cost_usd")
            display.update()
    finally:
        display.close()
        await run.llm.aclose()
    out.finish()
    return exit_status(out, console)


async def load_rows(path: str | None) -> list[dict[str, Any]]:
    if path is None:
        return []
    try:
        return await asyncio.to_thread(formats.read_rows, path)
    except formats.FormatError as exc:
        raise UsageError(str(exc)) from None
