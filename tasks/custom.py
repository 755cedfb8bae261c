"""Tasks without code: one TOML file per task in the `[tasks] custom_dir` folder, loaded at
start-up and served like any built-in task. A file that does not load stops the start-up
with an error naming it.

    name = "oss-instruct"                    # [a-z0-9][a-z0-9_-]*, unique among all tasks
    description = "..."
    inputs = ["code_snippet"]                # row columns; the template must use each of them
    outputs = ["problem", "solution"]
    system_prompt = "..."                    # optional (a request may override it, or null it)
    template = '''... {{ code_snippet }} ...'''   # Jinja2, rendered sandboxed: the user message

    [parser]                                 # or just  parser = "raw"
    type = "regex"                           # raw: the whole answer into the one output column
    pattern = '''(?s)...(?P<problem>.*)...(?P<solution>.*)'''   # regex: a named group per output
                                             # json: the answer's JSON object, a key per output
"""

from __future__ import annotations

import random
import re
import tomllib
from collections.abc import Collection
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, field_validator, model_validator

from llm_clients.base import Message

from .base import InputError, ParseError, RowContext, RowError, Task, TaskParams
from .parsing import json_object, pick_keys
from .rendering import TemplateError, compile_user_template, off_loop, render_user_template
from .structured import StructuredOutputParams, structured_answer

__all__ = ["CustomTaskError", "FileTask", "load_dir", "load_file"]

NAME = r"^[a-z0-9][a-z0-9_-]{0,63}$"
COLUMN = r"^[A-Za-z_][A-Za-z0-9_]{0,63}$"
RESERVED = frozenset({"model_name", "metadata", "error", "index"})


class CustomTaskError(ValueError):
    """A task file that cannot be loaded; the message names the file."""


class ParserSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["raw", "regex", "json"]
    pattern: str | None = None

    @model_validator(mode="after")
    def _pattern(self) -> ParserSpec:
        if (self.type == "regex") != (self.pattern is not None):
            raise ValueError("a regex parser needs `pattern`, and only a regex parser takes one")
        return self


class TaskFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=NAME)
    description: str = ""
    inputs: list[str] = Field(min_length=1, max_length=64)
    outputs: list[str] = Field(min_length=1, max_length=64)
    template: str = Field(min_length=1, max_length=100_000)
    system_prompt: str | None = None
    parser: ParserSpec

    @field_validator("parser", mode="before")
    @classmethod
    def _short_parser(cls, value):
        return {"type": value} if isinstance(value, str) else value

    @field_validator("inputs", "outputs")
    @classmethod
    def _columns(cls, value: list[str]) -> list[str]:
        for col in value:
            if not re.match(COLUMN, col):
                raise ValueError(f"{col!r} is not a column name ({COLUMN})")
            if col in RESERVED:
                raise ValueError(f"{col!r} is reserved")
        if len(set(value)) != len(value):
            raise ValueError("a column is listed twice")
        return value

    @model_validator(mode="after")
    def _shape(self) -> TaskFile:
        both = set(self.inputs) & set(self.outputs)
        if both:
            raise ValueError(f"column(s) {sorted(both)} are both inputs and outputs")
        if self.parser.type == "raw" and len(self.outputs) != 1:
            raise ValueError("a raw parser fills exactly one output column")
        if self.parser.type == "regex":
            assert self.parser.pattern is not None  # (checked by the parser's own validator)
            try:
                groups = set(re.compile(self.parser.pattern).groupindex)
            except re.error as exc:
                raise ValueError(f"parser.pattern: {exc}") from None
            missing = [o for o in self.outputs if o not in groups]
            if missing:
                raise ValueError(f"parser.pattern has no named group (?P<name>...) for {missing}")
        try:
            compile_user_template(self.template, tuple(self.inputs))
        except TemplateError as exc:
            raise ValueError(f"template: {exc}") from None
        return self


class FileTask(Task):
    """A task defined by a TaskFile: one call, the template as the user message."""

    def __init__(self, spec: TaskFile, path: Path):
        self.spec, self.path = spec, path
        self.name = spec.name
        self.description = spec.description or f"Defined in {path.name}."
        self.inputs, self.outputs = tuple(spec.inputs), tuple(spec.outputs)
        self.Params = create_model(
            f"{_camel(spec.name)}Params", __base__=StructuredOutputParams,
            system_prompt=(str | None, Field(spec.system_prompt, max_length=100_000,
                                             description="The system message (null: none).")),
        )
        self.template = compile_user_template(spec.template, self.inputs)
        self.pattern = re.compile(spec.parser.pattern) if spec.parser.pattern is not None else None

    def output_columns(self, params: TaskParams) -> tuple[str, ...]:
        return self.outputs + ("generation_parsed",) if params.structured_output else self.outputs  # type: ignore[attr-defined]

    def check_row(self, row: dict[str, Any], params: TaskParams) -> None:
        for col in self.inputs:
            if row.get(col) is None:
                raise RowError(col, f"missing column {col!r}")
        try:
            self.format(row, params, None)
        except TemplateError as exc:
            raise InputError(f"template of {self.path.name}: {exc}") from None

    def format(self, row: dict[str, Any], params: TaskParams, rng: random.Random | None) -> list[Message]:
        content = render_user_template(self.template, {c: row[c] for c in self.inputs})
        system = params.system_prompt  # type: ignore[attr-defined]
        return ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": content}]

    async def run(self, ctx: RowContext, row: dict[str, Any], params: TaskParams) -> dict | list[dict]:
        if params.structured_output is not None:  # type: ignore[attr-defined]
            ctx.kwargs = ctx.kwargs.with_json_schema(params.structured_output.json_schema)  # type: ignore[attr-defined]
        # the template renders within rendering's limits (up to a second): off the event loop
        answer = await ctx.chat(await off_loop(self.format, row, params, ctx.rng()))
        return self.parse(answer, row, params)

    def parse(self, answer: str, row: dict[str, Any], params: TaskParams) -> dict[str, Any]:
        """The file's parser on the answer; with structured output, the answer first checked
        against the schema, its value in `generation_parsed`."""
        structured = params.structured_output  # type: ignore[attr-defined]
        if structured is None:
            return self._parse(answer)
        value = structured_answer(answer, structured.json_schema)
        return {**self._parse(answer), "generation_parsed": value}

    def _parse(self, answer: str) -> dict[str, Any]:
        kind = self.spec.parser.type
        if kind == "json":
            return pick_keys(json_object(answer), self.outputs)
        if kind == "raw":
            if not answer.strip():
                raise ParseError("the answer is empty")
            return {self.outputs[0]: answer.strip()}
        assert self.pattern is not None  # (a regex parser's, compiled with the file)
        m = self.pattern.search(answer)
        if m is None:
            raise ParseError(f"the answer does not match the pattern of {self.path.name}")
        return {o: _strip(m.group(o)) for o in self.outputs}


def _strip(value: str | None) -> str | None:
    return value.strip() if value is not None else None


def _camel(name: str) -> str:
    return "".join(p.capitalize() for p in re.split(r"[-_]", name))


def load_file(path: Path) -> FileTask:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise CustomTaskError(f"task file {path}: cannot read it: {exc}") from None
    try:
        spec = TaskFile.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'file'}: {e['msg']}" for e in exc.errors())
        raise CustomTaskError(f"task file {path}: {problems}") from None
    return FileTask(spec, path)


def load_dir(path: Path, taken: Collection[str] = ()) -> list[Task]:
    """Every `*.toml` in `path`, in name order; `taken`: the names already registered
    (the built-in tasks), which a file may not reuse."""
    if not path.is_dir():
        raise CustomTaskError(f"tasks custom_dir {path} is not a directory")
    tasks: list[Task] = []
    names: dict[str, Path] = {}
    for file in sorted(path.glob("*.toml")):
        task = load_file(file)
        if task.name in taken:
            raise CustomTaskError(f"task file {file}: {task.name!r} is the name of a built-in task")
        if task.name in names:
            raise CustomTaskError(f"task file {file}: task {task.name!r} is also defined in {names[task.name]}")
        names[task.name] = file
        tasks.append(task)
    return tasks
