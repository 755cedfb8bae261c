"""The Task shape and the shared runner.

A task is data plus pure functions: a name, a params model, its input and output columns,
`format(row, params, rng) -> messages` and `parse(answer, row, params) -> outputs`, which
does no I/O and raises ParseError. Multi-call tasks override the async `run(ctx, row,
params)`; whole-request algorithms (evol generators) override `stream`.

`Task.stream(run)` yields `(index, output_row)` in completion order; every unit (an input
row, or one generation of a generator task) runs concurrently, bounded by the backend's
CallPolicy, and a failing unit marks only its own rows.
"""

from __future__ import annotations

import asyncio
import random
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from llm_clients.base import Capability, Completion, GenerationKwargs, LLMClient, LLMError, Message, Usage
from llm_clients.cache import CachedVectors, enter_unit
from llm_clients.errors import row_error

from .rendering import TemplateError
from .streaming import Emit, produced

__all__ = ["InputError", "ParseError", "RowContext", "RowError", "Split", "Task", "TaskParams", "TaskRun"]


class ParseError(ValueError):
    """The model's answer could not be parsed. Marks its own row (`parse_error`); `outputs`
    are what could be read all the same (paid text is never discarded), None for nothing."""

    def __init__(self, message: str, outputs: dict[str, Any] | None = None):
        super().__init__(message)
        self.outputs = outputs


class InputError(Exception):
    """A request the task cannot run, found before any call: params that do not go
    together, a backend without a capability the task needs, a template that fails on a
    row. The API answers 422 with the message (app.runs); nothing else counts as one."""


class RowError(InputError):
    """A row that fails validation; `field` names the column."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


class TaskParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    seed: int = Field(default_factory=lambda: secrets.randbelow(2**31), description=(
        "Seeds every random choice, per (seed, row index, step). Omitted: drawn per request and "
        "returned as `seed`, so sending it back reproduces the run."))


P = TypeVar("P", bound=TaskParams)

# How a job splits a request into units, the pieces it runs, stores and retries one by
# one (app.jobs plans its chunks by it): one unit per input row, one per generation asked
# for, or the whole request as one algorithm (a task that overrides `Task.stream`).
Split = Literal["rows", "generations", "whole"]


class LazyRandom(random.Random):
    """random.Random(seed), seeded on its first draw: most rows never draw, and seeding from
    a str (sha512, then the generator's state) was ~5% of a cached row's CPU. The same
    numbers as random.Random(seed) (tests/tasks/test_base.py)."""

    def __init__(self, seed: str):  # noqa: D107 - Random.__init__ would seed now
        self._pending: str | None = seed
        self.gauss_next = None

    def _seeded(self) -> None:
        if self._pending is not None:
            seed, self._pending = self._pending, None
            super().seed(seed)

    def random(self) -> float:
        self._seeded()
        return super().random()

    def getrandbits(self, k: int) -> int:
        self._seeded()
        return super().getrandbits(k)

    def getstate(self) -> tuple:
        self._seeded()
        return super().getstate()

    def seed(self, a: Any = None, version: int = 2) -> None:
        self._pending = None
        super().seed(a, version)

    def setstate(self, state: tuple) -> None:
        self._pending = None
        super().setstate(state)


@dataclass(slots=True)
class RowContext:
    """One unit of work's view of the LLM: records usage, calls and the last raw exchange,
    and replays answers already checkpointed (a job row retried after a crash)."""

    index: int
    llm: LLMClient
    kwargs: GenerationKwargs
    seed: int = 42
    model: str | None = None
    on_token: Callable[[int, str], Any] | None = None
    checkpoint: dict[str, Any] = field(default_factory=dict)
    on_checkpoint: Callable[[str, Any], Awaitable[None]] | None = None
    usage: Usage = field(default_factory=Usage)
    llm_calls: int = 0
    raw_input: Any = None
    raw_output: Any = None
    model_name: str | None = None

    def rng(self, step: int | str = 0) -> random.Random:
        # str seeds hash with sha512: the same in every process, unlike hash()
        return LazyRandom(f"{self.seed}:{self.index}:{step}")

    async def chat(self, messages: list[Message], *, step: str | None = None,
                   kwargs: GenerationKwargs | None = None, stream: bool = False) -> str:
        if step is not None and step in self.checkpoint:
            self.raw_input, self.raw_output = messages, self.checkpoint[step]
            return self.checkpoint[step]
        kwargs = kwargs or self.kwargs
        self.raw_input = messages
        if stream and (on_token := self.on_token) is not None:
            completion = await self.llm.stream_chat(
                messages, kwargs, model=self.model, on_delta=lambda d: on_token(self.index, d))
            self._record(completion)
        else:
            (completion,) = await self.llm.chat(messages, kwargs, model=self.model)
            self._record(completion)
        await self._save(step, completion.text)
        return completion.text

    async def chat_n(self, messages: list[Message], n: int) -> list[str]:
        self.raw_input = messages
        completions = await self.llm.chat(messages, self.kwargs, model=self.model, n=n)
        for c in completions:
            self._record(c, calls=0)
        self.llm_calls += 1 if getattr(self.llm, "native_n", False) else n
        self.raw_output = [c.text for c in completions] if n > 1 else completions[0].text
        return [c.text for c in completions]

    async def complete(self, prompt: str, *, step: str | None = None,
                       kwargs: GenerationKwargs | None = None) -> str:
        if step is not None and step in self.checkpoint:
            self.raw_input, self.raw_output = prompt, self.checkpoint[step]
            return self.checkpoint[step]
        self.raw_input = prompt
        completion = await self.llm.complete(prompt, kwargs or self.kwargs, model=self.model)
        self._record(completion)
        await self._save(step, completion.text)
        return completion.text

    async def embed(self, inputs: list[Any]) -> list[list[float]]:
        self.raw_input = inputs
        vectors = await self.llm.embed(inputs)
        self.llm_calls += 1
        if isinstance(vectors, CachedVectors):
            self.usage = self.usage + Usage(cached_calls=1)
        self.model_name = self.model or self.llm.model
        self.raw_output = None
        return vectors

    def _record(self, completion: Completion, calls: int = 1) -> None:
        self.usage = self.usage + completion.usage
        self.llm_calls += calls
        self.raw_output = completion.text
        self.model_name = completion.model or self.model or self.llm.model

    async def _save(self, step: str | None, text: str) -> None:
        if step is not None:
            self.checkpoint[step] = text
            if self.on_checkpoint is not None:
                await self.on_checkpoint(step, text)


@dataclass(slots=True)
class TaskRun(Generic[P]):
    """Everything one request (or one job chunk) needs to run a task."""

    params: P
    llm: LLMClient
    kwargs: GenerationKwargs
    rows: list[dict[str, Any]] = field(default_factory=list)
    model: str | None = None
    include_raw: bool = True
    on_token: Callable[[int, str], Any] | None = None
    # unit index -> checkpointed step answers, and a hook to persist new ones (jobs)
    checkpoints: dict[int, dict[str, Any]] = field(default_factory=dict)
    on_checkpoint: Callable[[int, str, Any], Awaitable[None]] | None = None
    # which units to run (jobs run a chunk of a job); None = all
    units: list[int] | None = None
    usage: Usage = field(default_factory=Usage)

    def context(self, index: int) -> RowContext:
        save = self.on_checkpoint
        return RowContext(
            index=index, llm=self.llm, kwargs=self.kwargs, seed=self.params.seed, model=self.model,
            on_token=self.on_token, checkpoint=dict(self.checkpoints.get(index, {})),
            on_checkpoint=(lambda step, value: save(index, step, value)) if save else None,
        )


class Task(Generic[P]):
    # (not ClassVars: a task defined by a file, tasks.custom.FileTask, sets them per instance)
    name: str
    description: str = ""
    inputs: tuple[str, ...] = ()
    outputs: tuple[str, ...] = ()
    generator: ClassVar[bool] = False
    Params: type[P] = TaskParams  # type: ignore[assignment]  # (a ClassVar cannot hold P)
    split: ClassVar[Split] = "rows"  # a generator without its own: "generations" (__init_subclass__)
    requires: ClassVar[frozenset[Capability]] = frozenset({"chat"})

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.generator and "split" not in cls.__dict__ and cls.split == "rows":
            cls.split = "generations"

    # ---- declared shape ----

    def output_columns(self, params: P) -> tuple[str, ...]:
        return self.outputs

    def num_units(self, params: P, rows: list[dict]) -> int:
        """Units of work: the input rows, or for a generator the generations asked for."""
        return len(rows)

    def rows_per_unit(self, params: P) -> int | None:
        """Output rows per unit; None when it varies (then indexes follow completion order)."""
        return 1

    def failed_outputs(self, row: dict[str, Any], params: P) -> dict[str, Any]:
        """The outputs of a row that failed; columns left out are null."""
        return {}

    def unit_groups(self, run: TaskRun[P], units: list[int]) -> list[list[int]]:
        """Units that share one LLM call (see `run_group`); by default each runs alone."""
        return [[i] for i in units]

    def info(self) -> dict[str, Any]:
        return {"name": self.name, "description": self.description, "inputs": list(self.inputs),
                "outputs": list(self.outputs), "generator": self.generator}

    # ---- validation, before any LLM call ----

    def check(self, params: P, llm: LLMClient) -> None:
        """Raise InputError for params that are fine one by one but not together, or a
        backend that lacks a capability this task needs."""
        missing = self.requires - llm.capabilities
        if missing:
            raise InputError(f"task {self.name!r} needs a backend that can {', '.join(sorted(missing))}; "
                             f"backend {llm.name!r} ({llm.provider}) cannot")

    def check_row(self, row: dict[str, Any], params: P) -> None:
        """Raise RowError naming the field. Default: every input column present, strings."""
        for col in self.inputs:
            if col not in row or row[col] is None:
                raise RowError(col, f"missing column {col!r}")
            if not isinstance(row[col], str):
                raise RowError(col, f"column {col!r} must be a string")

    # ---- one unit ----

    def format(self, row: dict[str, Any], params: P, rng: random.Random) -> list[Message]:
        raise NotImplementedError

    def parse(self, answer: str, row: dict[str, Any], params: P) -> dict[str, Any]:
        raise NotImplementedError

    async def run(self, ctx: RowContext, row: dict[str, Any], params: P) -> dict | list[dict]:
        """Outputs of one unit: a dict of output columns, or a list of them (several rows)."""
        answer = await ctx.chat(self.format(row, params, ctx.rng()))
        return self.parse(answer, row, params)

    # ---- the whole request ----

    async def stream(self, run: TaskRun[P]) -> AsyncIterator[tuple[int, dict[str, Any]]]:
        """Yield `(index, output_row)` as units finish. Cancelling the iteration cancels
        every pending unit (and with it their LLM calls)."""
        n_units = self.num_units(run.params, run.rows)
        units = run.units if run.units is not None else range(n_units)
        per_unit = self.rows_per_unit(run.params)
        groups = self.unit_groups(run, list(units))

        async def produce(emit: Emit[tuple[int, list[dict[str, Any]]]]) -> None:
            async def one(group: list[int]) -> None:
                for done in await self.run_group(run, group):
                    emit(done)

            async with asyncio.TaskGroup() as units_running:  # one raising (a bug) cancels the others
                for group in groups:
                    units_running.create_task(one(group))

        counter = 0
        async for i, out_rows in produced(produce):
            for j, out in enumerate(out_rows):
                if per_unit is None:
                    index, counter = counter, counter + 1
                else:
                    index = i * per_unit + j
                yield index, out

    async def run_group(self, run: TaskRun[P], group: list[int]) -> list[tuple[int, list[dict[str, Any]]]]:
        """Run a group of units: `(unit, its output rows)` for each."""
        return [(i, await self.run_unit(run, i)) for i in group]

    async def run_unit(self, run: TaskRun[P], i: int) -> list[dict[str, Any]]:
        """Run one unit and build its output rows; errors mark these rows only."""
        row = run.rows[i] if i < len(run.rows) else {}
        ctx = run.context(i)
        enter_unit(i)  # the call cache numbers a job's identical calls per unit
        result: dict | list | Exception
        try:
            result = await self.run(ctx, row, run.params)
        except (LLMError, ParseError, TemplateError) as exc:
            # a user template checked before any call can still go over a limit here
            # (its time budget on a busy machine): that fails its own row, not the request
            result = exc
        run.usage = run.usage + ctx.usage
        return self.rows_of(row, result, ctx, run)

    def rows_of(self, row: dict[str, Any], result: dict | list | Exception, ctx: RowContext,
                run: TaskRun[P]) -> list[dict[str, Any]]:
        """The output rows of a unit's result: its outputs, a list of them (one may be the
        ParseError of its own generation), or the error that failed the whole unit."""
        if isinstance(result, Exception):
            result = [result] * (self.rows_per_unit(run.params) or 1)
        elif isinstance(result, dict):
            result = [result]
        # k rows from k completions: each row keeps its own raw output, not all k (k² in all)
        raws = ctx.raw_output if isinstance(ctx.raw_output, list) and len(ctx.raw_output) == len(result) > 1 else None
        out = []
        for j, outputs in enumerate(result):
            error = None
            if isinstance(outputs, LLMError | ParseError | TemplateError):
                # an LLM error is cleaned (no key, host or port) and logged in full: llm_clients.errors
                error = (row_error(outputs, run.llm) if isinstance(outputs, LLMError)
                         else {"type": "parse_error", "message": str(outputs)} if isinstance(outputs, ParseError)
                         else {"type": "template_error", "message": str(outputs)})
                outputs = getattr(outputs, "outputs", None) or self.failed_outputs(row, run.params)
            built = self.build_row(row, outputs, ctx, error, run)
            if raws is not None and "raw_output" in built["metadata"]:
                built["metadata"] = {**built["metadata"], "raw_output": raws[j]}
            out.append(built)
        return out

    def build_row(self, row: dict[str, Any], outputs: dict[str, Any], ctx: RowContext,
                  error: dict | None, run: TaskRun[P]) -> dict[str, Any]:
        out = dict(row)
        for col in self.output_columns(run.params):
            out[col] = outputs.get(col)
        for col, value in outputs.items():  # extra outputs a task chose to add
            out.setdefault(col, value)
        metadata: dict[str, Any] = {"usage": ctx.usage.as_dict(), "llm_calls": ctx.llm_calls,
                                    "cached_calls": ctx.usage.cached_calls}
        if run.include_raw:
            metadata["raw_input"] = ctx.raw_input
            metadata["raw_output"] = ctx.raw_output
        out["model_name"] = ctx.model_name or run.model or run.llm.model
        out["metadata"] = metadata
        out["error"] = error
        return out
