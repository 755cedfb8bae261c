"""A definition checked as a whole against this server, before any call, into a Plan:
every task known and not a generator, its params valid, every backend configured and able
to run the task, every filter compiled, and every column a step reads provided by the
rows or by an earlier step (tasks declare their inputs and their outputs). Columns that
no step provides are the pipeline's input columns; after a `keep` step nothing more can
come from the rows. Every problem is an InvalidInput (422) naming the step and the column.

Compiling renders nothing but may take a while for long expressions: call it off the
event loop (asyncio.to_thread)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from llm_clients import GenerationKwargs, LLMClient
from tasks import InputError, Registry, RowError, Task, TaskParams
from tasks.rendering import TemplateError

from ..encoding import NOT_FINITE, non_finite
from ..errors import InvalidInput, SynthserveError
from ..runs import format_validation_error
from ..schemas import LLMSpec
from .definition import DedupStep, FilterStep, KeepStep, Pipeline, Step, TaskStep
from .filters import Compiled, compile_filter, compile_value

MODEL_NAME = "model_name"  # an output of every task step: the model that answered
# inputs a task reads when present (tasks declare their required ones in `inputs`)
OPTIONAL_INPUTS: dict[str, tuple[str, ...]] = {
    "text-generation": ("system_prompt",), "chat-generation": ("system_prompt",), "magpie": ("system_prompt",)}


@dataclass(slots=True)
class Call:
    """One LLM a task step runs on."""

    backend: str
    llm: LLMClient
    model: str | None
    kwargs: GenerationKwargs


@dataclass(slots=True)
class TaskPlan:
    step: TaskStep
    task: Task
    params: TaskParams
    calls: list[Call]
    inputs: dict[str, str]     # task input -> the row column it reads
    outputs: dict[str, str]    # task output (model_name included) -> the column it becomes
    grouped: bool              # `llms`: outputs become lists, one element per LLM
    fans_out: bool             # the task makes several rows per row (ids "r.j")


@dataclass(slots=True)
class FilterPlan:
    step: FilterStep
    test: Compiled


@dataclass(slots=True)
class DedupPlan:
    step: DedupStep


@dataclass(slots=True)
class KeepPlan:
    step: KeepStep
    computed: dict[str, Compiled]  # {column: expression} form: each kept column's value


StepPlan = TaskPlan | FilterPlan | DedupPlan | KeepPlan


@dataclass(slots=True)
class Plan:
    pipeline: Pipeline
    steps: list[StepPlan]
    seed: int
    inputs: list[str]                      # columns the rows must have
    outputs: list[str]                     # columns of a final row (besides id, metadata, error)
    needed_by: dict[str, str] = field(default_factory=dict)  # input column -> the first step reading it

    @property
    def name(self) -> str:
        return self.pipeline.name

    def check_rows(self, rows: list[Any]) -> None:
        """422 for a row without an input column, or one the first task step refuses."""
        # the first task step checks each row as /tasks would, unless a keep step before it
        # has remade the rows
        first = next((p for p in self.steps if isinstance(p, TaskPlan | KeepPlan)), None)
        if not isinstance(first, TaskPlan):
            first = None
        for i, row in enumerate(rows):
            if not isinstance(row, dict):
                raise InvalidInput(f"rows[{i}]: expected an object")
            for col in self.inputs:
                if row.get(col) is None:
                    raise InvalidInput(f"rows[{i}].{col}: missing column {col!r} "
                                       f"(step {self.needed_by[col]!r} reads it)")
            if first is not None:
                try:
                    first.task.check_row(task_row(first, row), first.params)
                except RowError as exc:
                    raise InvalidInput(f"rows[{i}].{first.inputs.get(exc.field, exc.field)}: {exc} "
                                       f"(step {first.step.name!r})") from None
                except InputError as exc:
                    raise InvalidInput(f"rows[{i}]: step {first.step.name!r}: {exc}") from None


def task_row(plan: TaskPlan, row: dict[str, Any]) -> dict[str, Any]:
    """The row as the task sees it: its mapped inputs under the task's names."""
    out = dict(row)
    for name, col in plan.inputs.items():
        if name != col:
            out[name] = row.get(col)
    return out


BackendOf = Callable[[str | None], tuple[str, LLMClient]]


def build(pipeline: Pipeline, registry: Registry, backend_of: BackendOf, *, seed: int) -> Plan:
    """The plan of `pipeline`, or InvalidInput naming the step. `backend_of(name)` gives a
    backend's name and client (AppState.backend; None = the default)."""
    available: list[str] = []  # columns known to be in every row at this point, in order
    open_ = True  # before any `keep`: a column no step provides comes from the rows
    inputs: list[str] = []
    needed_by: dict[str, str] = {}
    plans: list[StepPlan] = []

    def need(col: str, where: str, step: Step) -> None:
        if col in available:
            return
        if not open_:
            raise InvalidInput(f"{where}: column {col!r} is not provided by an earlier step "
                               f"(a `keep` step before it dropped the others)")
        inputs.append(col)
        available.append(col)
        needed_by.setdefault(col, step.name)

    def provide(col: str) -> None:
        if col not in available:
            available.append(col)

    for k, step in enumerate(pipeline.steps):
        where = f"steps[{k}] {step.name!r}"
        if isinstance(step, TaskStep):
            plan = _task_plan(step, where, registry, backend_of, seed)
            for col in plan.inputs.values():
                need(col, f"{where}: input", step)
            for col in plan.outputs.values():
                provide(col)
            if step.explode is not None and step.explode not in available:
                raise InvalidInput(f"{where}: explode: column {step.explode!r} is not among the row's columns "
                                   f"after this step ({available})")
            plans.append(plan)
        elif isinstance(step, FilterStep):
            try:
                test = compile_filter(step.filter)
            except TemplateError as exc:
                raise InvalidInput(f"{where}: filter: {exc}") from None
            for col in test[1]:
                need(col, f"{where}: filter", step)
            plans.append(FilterPlan(step, test))
        elif isinstance(step, DedupStep):
            need(step.dedup.column, f"{where}: dedup.column", step)
            plans.append(DedupPlan(step))
        else:
            computed: dict[str, Compiled] = {}
            if isinstance(step.keep, dict):
                for col, expression in step.keep.items():
                    try:
                        computed[col] = compile_value(expression)
                    except TemplateError as exc:
                        raise InvalidInput(f"{where}: keep.{col}: {exc}") from None
                    for used in computed[col][1]:
                        need(used, f"{where}: keep.{col}", step)
                available[:] = list(step.keep)
            else:
                for col in step.keep:
                    need(col, f"{where}: keep", step)
                available[:] = [c for c in available if c in step.keep]
            open_ = False
            plans.append(KeepPlan(step, computed))
    return Plan(pipeline, plans, seed, inputs, list(available), needed_by)


def _task_plan(step: TaskStep, where: str, registry: Registry, backend_of: BackendOf, seed: int) -> TaskPlan:
    task = registry.get(step.task)
    if task is None:
        raise InvalidInput(f"{where}: unknown task {step.task!r}; see GET /tasks")
    if task.generator:
        raise InvalidInput(f"{where}: task {step.task!r} is a generator; a pipeline's steps take rows "
                           "(run it with POST /tasks or /jobs and feed its rows to the pipeline)")
    bad = non_finite(step.params, "params")
    if bad is not None:
        raise InvalidInput(f"{where}: {bad}: {NOT_FINITE}")
    try:
        params = task.Params.model_validate({"seed": seed, **step.params})
    except ValidationError as exc:
        raise InvalidInput(format_validation_error(f"{where}: params", exc)) from None
    if step.llm is not None and step.llms is not None:
        raise InvalidInput(f"{where}: give `llm` or `llms`, not both")
    specs = step.llms if step.llms is not None else [step.llm or LLMSpec()]
    calls = []
    for j, spec in enumerate(specs):
        at = f"{where}: llms[{j}]" if step.llms is not None else f"{where}: llm"
        bad = non_finite(spec.generation_kwargs.given(), "generation_kwargs")
        if bad is not None:
            raise InvalidInput(f"{at}.{bad}: {NOT_FINITE}")
        try:
            name, client = backend_of(spec.backend)
            task.check(params, client)
        except SynthserveError as exc:
            raise InvalidInput(f"{at}: {exc.detail}") from None
        except InputError as exc:
            raise InvalidInput(f"{at}: {exc}") from None
        calls.append(Call(name, client, spec.model, spec.generation_kwargs))

    columns = getattr(params, "columns", None)  # text-generation: the template's columns
    declared = [str(c) for c in columns] if isinstance(columns, list) else list(task.inputs)
    optional = OPTIONAL_INPUTS.get(task.name, ())
    for name in step.input_mappings:
        if name not in declared and name not in optional:
            raise InvalidInput(f"{where}: input_mappings: {name!r} is not an input of task {task.name!r} "
                               f"(inputs: {declared + [c for c in optional if c not in declared]})")
    inputs = {name: step.input_mappings.get(name, name) for name in declared if name not in optional}
    inputs |= {name: col for name, col in step.input_mappings.items() if name in optional}

    produced = [*task.output_columns(params), MODEL_NAME]
    for name in step.output_mappings:
        if name not in produced:
            raise InvalidInput(f"{where}: output_mappings: {name!r} is not an output of task {task.name!r} "
                               f"(outputs: {produced})")
    grouped = step.llms is not None
    default = (lambda c: f"grouped_{c}") if grouped else (lambda c: c)
    outputs = {name: step.output_mappings.get(name, default(name)) for name in produced}
    if len(set(outputs.values())) != len(outputs):
        raise InvalidInput(f"{where}: output_mappings: two outputs would have the same column name")
    fans_out = task.rows_per_unit(params) != 1
    return TaskPlan(step, task, params, calls, inputs, outputs, grouped, fans_out)
