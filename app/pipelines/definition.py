"""A pipeline definition as data: a name and an ordered list of steps, each one of four
kinds (a task, a filter, a dedup, a keep). Parsed by hand from a dict so that every 422
names the step (`steps[2] 'judge': ...`) rather than pydantic's union of four guesses."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..errors import InvalidInput
from ..runs import format_validation_error
from ..schemas import LLMSpec

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$"
KINDS = ("task", "filter", "dedup", "keep")
MAX_STEPS = 64


class _Def(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TaskStep(_Def):
    name: str = Field(pattern=NAME_PATTERN)
    task: str
    params: dict[str, Any] = Field(default_factory=dict)
    llm: LLMSpec | None = None
    llms: list[LLMSpec] | None = Field(None, min_length=1, max_length=16)
    input_mappings: dict[str, str] = Field(default_factory=dict, description="{task input: row column}")
    output_mappings: dict[str, str] = Field(default_factory=dict, description="{task output: new column}")
    explode: str | None = None


class FilterStep(_Def):
    name: str = Field(pattern=NAME_PATTERN)
    filter: str = Field(min_length=1, max_length=10_000)


class DedupSpec(_Def):
    column: str
    method: Literal["exact", "minhash"] = "exact"
    threshold: float = Field(0.9, gt=0, lt=1, allow_inf_nan=False,
                             description="minhash: the Jaccard similarity above which a row is a near-duplicate")


class DedupStep(_Def):
    name: str = Field(pattern=NAME_PATTERN)
    dedup: DedupSpec


class KeepStep(_Def):
    name: str = Field(pattern=NAME_PATTERN)
    keep: list[str] | dict[str, str] = Field(min_length=1, description=(
        "The columns to keep, or {column: Jinja2 expression over the row} to keep computed columns"))


Step = TaskStep | FilterStep | DedupStep | KeepStep
MODELS: dict[str, type[_Def]] = {"task": TaskStep, "filter": FilterStep, "dedup": DedupStep, "keep": KeepStep}


class Pipeline(_Def):
    name: str = Field(pattern=NAME_PATTERN)
    description: str = ""
    steps: list[Step]

    def public(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=True, exclude_defaults=True) | {
            "name": self.name, "description": self.description}


def kind(step: Step) -> str:
    return {TaskStep: "task", FilterStep: "filter", DedupStep: "dedup", KeepStep: "keep"}[type(step)]


def parse(data: Any, *, default_name: str = "inline") -> Pipeline:
    """A Pipeline from JSON-like data; InvalidInput (422) naming the step otherwise. A step
    without a name is named after its task (or kind), made unique by position."""
    if not isinstance(data, dict):
        raise InvalidInput("pipeline: expected an object with `steps`")
    extra = sorted(set(data) - {"name", "description", "steps"})
    if extra:
        raise InvalidInput(f"pipeline: unknown field(s) {extra}; a pipeline has name, description, steps")
    raw_steps = data.get("steps")
    if not isinstance(raw_steps, list) or not raw_steps:
        raise InvalidInput("pipeline.steps: a non-empty list of steps is required")
    if len(raw_steps) > MAX_STEPS:
        raise InvalidInput(f"pipeline.steps: at most {MAX_STEPS} steps")
    steps: list[Step] = []
    seen: set[str] = set()
    for k, raw in enumerate(raw_steps):
        where = f"steps[{k}]"
        if not isinstance(raw, dict):
            raise InvalidInput(f"{where}: expected an object")
        kinds = [key for key in KINDS if key in raw]
        if len(kinds) != 1:
            raise InvalidInput(f"{where}: a step has exactly one of {', '.join(KINDS)} (found {kinds or 'none'})")
        raw = dict(raw)
        name = raw.setdefault("name", raw["task"] if kinds[0] == "task" and isinstance(raw["task"], str)
                              else kinds[0])
        if isinstance(name, str) and name in seen and "name" not in raw_steps[k]:
            name = raw["name"] = f"{name}-{k}"
        if isinstance(name, str):
            where = f"{where} {name!r}"
        try:
            step = MODELS[kinds[0]].model_validate(raw)
        except ValidationError as exc:
            raise InvalidInput(format_validation_error(where, exc)) from None
        if step.name in seen:
            raise InvalidInput(f"{where}: step names must be unique")
        seen.add(step.name)
        steps.append(step)  # type: ignore[arg-type]
    try:
        return Pipeline(name=data.get("name", default_name), description=data.get("description", ""),
                        steps=steps)
    except ValidationError as exc:
        raise InvalidInput(format_validation_error("pipeline", exc)) from None
