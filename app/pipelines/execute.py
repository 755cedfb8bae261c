"""One row through one step (`Executor.apply`), and a row's tree through every step
(`Executor.walk`): a row enters the next step the moment it leaves this one, and the rows
a step makes of it (explode, several generations) go on concurrently.

A row (`Item`) carries its id, its columns, the step it runs next, its metadata so far
and its error. Ids: input row i is "i"; the j-th row made of row r by a step is "r.j".
A step's outcome is the rows that leave it (advanced to the next step, or stopped with an
error that names the step) and how many it dropped; a row that leaves the last step, or
fails, is final.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from llm_clients import LLMClient, LLMError, Usage
from llm_clients.cache import enter_unit
from tasks import InputError, ParseError, RowContext, TaskRun
from tasks.rendering import TemplateError

from .check import DedupPlan, FilterPlan, KeepPlan, Plan, TaskPlan, task_row
from .dedup import DedupIndex
from .filters import passes, value
from .gate import GatedClient, Held, holding, release_holding

USAGE_KEYS = ("input_tokens", "output_tokens", "cost_usd", "cached_calls")


@dataclass(slots=True)
class Item:
    id: str
    row: dict[str, Any]
    step: int = 0  # the next step to run
    meta: dict[str, Any] = field(default_factory=dict)  # {"steps": {name: that step's metadata}}
    error: dict[str, Any] | None = None

    def dump(self) -> dict[str, Any]:
        return {"id": self.id, "row": self.row, "step": self.step, "meta": self.meta, "error": self.error}

    @classmethod
    def load(cls, data: dict[str, Any]) -> Item:
        return cls(data["id"], data["row"], data["step"], data["meta"], data["error"])

    def final(self) -> dict[str, Any]:
        """The row as answered: id first, the columns, metadata (usage and calls summed over
        the steps, and each step's own), error."""
        usage = Usage()
        calls = 0
        for step in self.meta.get("steps", {}).values():
            for m in step if isinstance(step, list) else [step]:
                u = m.get("usage", {})
                usage = usage + Usage(u.get("input_tokens", 0), u.get("output_tokens", 0), u.get("cost_usd", 0.0),
                                      u.get("cached_calls", 0))
                calls += m.get("llm_calls", 0)
        metadata = {"usage": usage.as_dict(), "llm_calls": calls, "cached_calls": usage.cached_calls,
                    "steps": self.meta.get("steps", {})}
        return {"id": self.id, **self.row, "metadata": metadata, "error": self.error}


@dataclass(slots=True)
class Outcome:
    items: list[Item]  # the rows leaving the step: advanced, or stopped with an error
    filtered: int = 0
    usage: Usage = field(default_factory=Usage)

    def counts(self) -> dict[str, Any]:
        failed = sum(i.error is not None for i in self.items)
        return {"rows_in": 1, "rows_out": len(self.items) - failed, "failed": failed, "filtered": self.filtered,
                "usage": self.usage.as_dict()}


def empty_counts() -> dict[str, Any]:
    return {"rows_in": 0, "rows_out": 0, "failed": 0, "filtered": 0, "usage": Usage().as_dict()}


def add_counts(total: dict[str, Any], delta: dict[str, Any]) -> None:
    for key in ("rows_in", "rows_out", "failed", "filtered"):
        total[key] += delta[key]
    for key in USAGE_KEYS:
        total["usage"][key] = total["usage"].get(key, 0) + delta["usage"].get(key, 0)
    total["usage"]["cost_usd"] = round(total["usage"]["cost_usd"], 9)


async def all_or_none(coros: Iterable[Awaitable[Any]]) -> None:
    """Await them all; when one raises (a bug, Redis gone), cancel the others before
    raising its exception as it is (gather would leave them running)."""
    tasks = [asyncio.ensure_future(c) for c in coros]
    try:
        await asyncio.gather(*tasks)
    except BaseException:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


def unit_index(row_id: str, step: str) -> int:
    """A row's index for the task's seeded choices, stable across processes: a row that
    runs a step again (a resumed job) makes the same prompts."""
    return int.from_bytes(hashlib.blake2b(f"{row_id}/{step}".encode(), digest_size=7).digest(), "big")


Stepped = Callable[[Item, Outcome], Awaitable[None]]
Final = Callable[[Item], Any]


class Executor:
    """The steps of one plan, with the clients they call (`clients[k][j]`: step k's j-th
    LLM, already wrapped by the caller: gated, cached, priced)."""

    def __init__(self, plan: Plan, clients: dict[int, list[LLMClient]], *, include_raw: bool,
                 dedup: DedupIndex | None, dry: bool = False):
        self.plan = plan
        self.clients = clients
        self.include_raw = include_raw
        self.dedup = dedup
        # a dry run (app.pipelines.estimate): the answers are empty, so every row goes through
        # every step (no filter, dedup or error stops it; an explode makes one row)
        self.dry = dry
        # for each step, the gates the next task step's calls pass: a row keeps its slot on
        # them between its calls (app.pipelines.gate.Held)
        self._next_gates = [self._gates_after(k) for k in range(len(plan.steps))]

    def _gates_after(self, k: int) -> frozenset:
        for later in range(k + 1, len(self.plan.steps)):
            if isinstance(self.plan.steps[later], TaskPlan):
                return frozenset(c.gate for c in self.clients.get(later, []) if isinstance(c, GatedClient))
        return frozenset()

    async def walk(self, item: Item, stepped: Stepped, final: Final) -> None:
        """Run `item` to the end: `stepped(item, outcome)` after each step (awaited before
        the next), `final(row)` for each row that is done."""
        n = len(self.plan.steps)
        held = Held()
        token = holding(held)
        try:
            while item.error is None and item.step < n:
                held.keep = self._next_gates[item.step]
                outcome = await self.apply(item)
                await stepped(item, outcome)
                if len(outcome.items) != 1:
                    held.release()
                    await all_or_none(self.walk(child, stepped, final) for child in outcome.items)
                    return
                item = outcome.items[0]
        finally:
            release_holding(token)
        done = final(item)
        if done is not None:
            await done

    async def apply(self, item: Item) -> Outcome:
        k = item.step
        plan = self.plan.steps[k]
        if isinstance(plan, TaskPlan):
            return await self._task(k, plan, item)
        if self.dry and isinstance(plan, FilterPlan | DedupPlan):
            return Outcome([_advanced(item, item.id, item.row)])
        if isinstance(plan, FilterPlan):
            try:
                ok = await asyncio.to_thread(passes, plan.test, item.row)
            except TemplateError as exc:
                return Outcome([_failed(item, plan.step.name, "filter_error", str(exc))])
            return Outcome([_advanced(item, item.id, item.row)] if ok else [], filtered=0 if ok else 1)
        if isinstance(plan, DedupPlan):
            spec = plan.step.dedup
            assert self.dedup is not None
            kept = await self.dedup.keep(plan.step.name, spec, item.id, item.row.get(spec.column))
            return Outcome([_advanced(item, item.id, item.row)] if kept else [], filtered=0 if kept else 1)
        assert isinstance(plan, KeepPlan)
        if not plan.computed:
            return Outcome([_advanced(item, item.id, {c: item.row.get(c) for c in plan.step.keep})])
        try:
            row = await asyncio.to_thread(lambda: {c: value(e, item.row) for c, e in plan.computed.items()})
        except TemplateError as exc:
            return Outcome([_failed(item, plan.step.name, "keep_error", str(exc))])
        return Outcome([_advanced(item, item.id, row)])

    async def _task(self, k: int, plan: TaskPlan, item: Item) -> Outcome:
        name = plan.step.name
        inp = task_row(plan, item.row)
        try:
            plan.task.check_row(inp, plan.params)
        except InputError as exc:
            where = f"column {plan.inputs.get(exc.field, exc.field)!r}: " if hasattr(exc, "field") else ""
            return Outcome([_failed(item, name, "input_error", f"{where}{exc}")])
        per_llm = await asyncio.gather(*(self._call(k, plan, j, inp, item.id) for j in range(len(plan.calls))))
        usage = Usage()
        for rows in per_llm:  # every row of one call carries that call's usage: count it once
            if rows:
                u = rows[0]["metadata"]["usage"]
                usage = usage + Usage(u.get("input_tokens", 0), u.get("output_tokens", 0), u.get("cost_usd", 0.0),
                                      u.get("cached_calls", 0))
        if plan.grouped:
            firsts = [rows[0] for rows in per_llm]
            row = dict(item.row)
            for out_name, col in plan.outputs.items():
                row[col] = [r.get(out_name) for r in firsts]
            meta = _with_step(item.meta, name, [r["metadata"] for r in firsts])
            failed = [(j, r["error"]) for j, r in enumerate(firsts) if r["error"] is not None and not self.dry]
            if failed:
                j, error = failed[0]
                message = f"llms[{j}] ({plan.calls[j].backend}): {error.get('message', '')}"
                return Outcome([Item(item.id, row, k, meta, {**error, "message": message, "step": name})], usage=usage)
            made = [(item.id, row, meta, None)]
        else:
            made = []
            (rows,) = per_llm
            for j, r in enumerate(rows):
                row = dict(item.row)
                for out_name, col in plan.outputs.items():
                    row[col] = r.get(out_name)
                for extra, made_value in r.items():  # outputs a task added beyond those it declares
                    if extra not in inp and extra not in plan.outputs and extra not in ("metadata", "error"):
                        row[extra] = made_value
                row_id = f"{item.id}.{j}" if plan.fans_out else item.id
                error = None if r["error"] is None or self.dry else {**r["error"], "step": name}
                made.append((row_id, row, _with_step(item.meta, name, r["metadata"]), error))
        out: list[Item] = []
        for row_id, row, meta, error in made:
            column = plan.step.explode
            if error is not None or column is None:  # an error stops this row only (a fan-out goes on)
                out.append(Item(row_id, row, k if error else k + 1, meta, error))
                continue
            values = row.get(column)
            if self.dry and not (isinstance(values, list) and values):
                values = [""]  # an empty answer made no list: one row stands for the unknown fan-out
            if not isinstance(values, list):
                out.append(Item(row_id, row, k, meta, {"type": "explode_error", "step": name, "message":
                                f"explode: column {column!r} holds {type(values).__name__}, not a list"}))
                continue
            out.extend(Item(f"{row_id}.{j}", {**row, column: v}, k + 1, meta) for j, v in enumerate(values))
        return Outcome(out, usage=usage)

    async def _call(self, k: int, plan: TaskPlan, j: int, inp: dict[str, Any], row_id: str) -> list[dict[str, Any]]:
        call = plan.calls[j]
        client = self.clients[k][j]
        run = TaskRun(params=plan.params, llm=client, kwargs=call.kwargs, rows=[inp], model=call.model,
                      include_raw=self.include_raw)
        index = unit_index(row_id, plan.step.name)
        enter_unit(index)  # a job's call cache numbers identical calls per unit: here, per row and step
        ctx = RowContext(index=index, llm=client, kwargs=call.kwargs, seed=plan.params.seed, model=call.model)
        result: Any
        try:
            result = await plan.task.run(ctx, inp, plan.params)
        except (LLMError, ParseError) as exc:
            result = exc
        except (InputError, TemplateError) as exc:  # e.g. a template that fails on a row made upstream
            return [{**inp, "metadata": {"usage": ctx.usage.as_dict(), "llm_calls": ctx.llm_calls},
                     "error": {"type": "input_error", "message": str(exc)}}]
        return plan.task.rows_of(inp, result, ctx, run)


def _with_step(meta: dict[str, Any], step: str, step_meta: Any) -> dict[str, Any]:
    return {**meta, "steps": {**meta.get("steps", {}), step: step_meta}}


def _advanced(item: Item, row_id: str, row: dict[str, Any]) -> Item:
    return Item(row_id, row, item.step + 1, item.meta)


def _failed(item: Item, step: str, kind: str, message: str) -> Item:
    return Item(item.id, item.row, item.step, item.meta, {"type": kind, "message": message, "step": step})
