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

from .base import ParseError, TaskParams

__all__ = ["StructuredOutput", "StructuredOutputParams", "structured_answer"]

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
