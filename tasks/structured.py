"""Structured output: a task's answer constrained to a JSON schema. The schema goes to the
backend natively (GenerationKwargs.with_json_schema; each provider sends it in its own
form) and the answer is checked against it here, since a backend may only approximate it
(a server without grammar support, a length cut): an answer that is not valid JSON or does
not validate is a `parse_error`."""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Any

import jsonschema
from pydantic import BaseModel, ConfigDict, Field, field_validator

from .base import ParseError, RowContext, TaskParams

__all__ = ["DefaultStructuredOutput", "DefaultStructuredOutputParams", "StructuredOutput", "StructuredOutputParams",
           "structured_answer"]

MAX_SCHEMA_CHARS = 100_000


class StructuredOutput(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    json_schema: dict[str, Any] = Field(alias="schema", description="The JSON Schema the answer must follow.")

    @field_validator("json_schema")
    @classmethod
    def _valid_schema(cls, schema: dict[str, Any]) -> dict[str, Any]:
        if len(json.dumps(schema)) > MAX_SCHEMA_CHARS:
            raise ValueError(f"the schema is over {MAX_SCHEMA_CHARS} characters of JSON")
        try:
            jsonschema.validators.validator_for(schema).check_schema(schema)
        except jsonschema.SchemaError as exc:
            raise ValueError(f"not a valid JSON Schema: {exc.message}") from None
        return schema


class StructuredOutputParams(TaskParams):
    structured_output: StructuredOutput | None = Field(None, description=(
        "`{\"schema\": <JSON Schema>}`: the answer is JSON following it (sent to the backend natively, "
        "checked on return); `generation_parsed` holds the parsed value."))


class DefaultStructuredOutputParams(TaskParams):
    use_default_structured_output: bool = Field(False, description=(
        "Ask for the task's own JSON schema (distilabel's) instead of its text format: sent to the backend "
        "natively, the answer read as that JSON."))


class DefaultStructuredOutput:
    """distilabel's `use_default_structured_output`, for a one-call task (before OneCallTask
    in its bases): the call carries `default_schema`, and each answer is read as JSON of
    it by `read_structured` instead of the task's text parser."""

    def default_schema(self, params: Any) -> dict[str, Any]:
        raise NotImplementedError

    def read_structured(self, value: Any, row: dict[str, Any], params: Any) -> dict[str, Any]:
        """The outputs of a validated answer; ParseError (with what could be read) if unusable."""
        raise NotImplementedError

    async def run(self, ctx: RowContext, row: dict[str, Any], params: Any) -> dict | list:
        if params.use_default_structured_output:
            ctx.kwargs = ctx.kwargs.with_json_schema(self.default_schema(params))
        return await super().run(ctx, row, params)  # type: ignore[misc]

    def parse_one(self, answer: str, row: dict[str, Any], params: Any) -> dict[str, Any] | ParseError:
        if not params.use_default_structured_output:
            return super().parse_one(answer, row, params)  # type: ignore[misc]
        try:
            return self.read_structured(structured_answer(answer, self.default_schema(params)), row, params)
        except ParseError as exc:
            return exc


def structured_answer(answer: str, schema: dict[str, Any]) -> Any:
    """The answer's JSON value, checked against `schema`; ParseError if it is not JSON or
    does not validate."""
    try:
        value = json.loads(answer)
    except ValueError as exc:
        raise ParseError(f"the answer is not valid JSON: {exc}") from None
    error = jsonschema.exceptions.best_match(_validator(json.dumps(schema, sort_keys=True)).iter_errors(value))
    if error is not None:
        where = "/".join(map(str, error.absolute_path))
        message = error.message if len(error.message) <= 300 else error.message[:300] + "..."
        raise ParseError(f"the answer does not match the schema{f' at {where}' if where else ''}: {message}")
    return value


@lru_cache(maxsize=256)
def _validator(schema_text: str) -> jsonschema.protocols.Validator:
    schema = json.loads(schema_text)
    return jsonschema.validators.validator_for(schema)(schema)
