"""complexity-scorer and quality-scorer (DEITA, arXiv 2312.15685): rank a list of
instructions by complexity, or of responses by quality, in one call per row. Scores are
read by the index in `[i] Score: x`, never by line position; a row without scores (an
unreadable answer, a failed call) has `scores` null at every position, as distilabel's."""

from __future__ import annotations

import random
from typing import Any

from llm_clients.base import Message

from .base import ParseError, RowError
from .one_call import GenerationsParams, OneCallTask
from .parsing import scores_by_index
from .rendering import render
from .structured import DefaultStructuredOutput, DefaultStructuredOutputParams

MAX_ITEMS = 256


def _check_list(row: dict[str, Any], col: str) -> None:
    items = row.get(col)
    if not isinstance(items, list) or not items:
        raise RowError(col, f"column {col!r} must be a non-empty list of strings")
    if len(items) > MAX_ITEMS:
        raise RowError(col, f"column {col!r} has {len(items)} items; at most {MAX_ITEMS}")
    for j, item in enumerate(items):
        if not isinstance(item, str):
            raise RowError(col, f"{col}[{j}] must be a string")


class ScorerParams(GenerationsParams, DefaultStructuredOutputParams):
    """The params of both scorers."""


class _Scorer(DefaultStructuredOutput, OneCallTask[ScorerParams]):
    outputs = ("scores",)
    Params = ScorerParams
    items: str  # the list column scored
    schema_title: str  # distilabel's get_structured_output: {"scores": [int, ...]}

    def empty_outputs(self, row: dict[str, Any], params: ScorerParams) -> dict[str, Any]:
        return {"scores": [None] * len(row[self.items])}

    def default_schema(self, params: ScorerParams) -> dict[str, Any]:
        return {"properties": {"scores": {"items": {"type": "integer"}, "title": "Scores", "type": "array"}},
                "required": ["scores"], "title": self.schema_title, "type": "object"}

    def read_structured(self, value: dict[str, Any], row: dict[str, Any], params: ScorerParams) -> dict[str, Any]:
        scores, n = value["scores"], len(row[self.items])
        if len(scores) != n:  # the scores given are kept, by position
            raise ParseError(f"{len(scores)} scores for {n} {self.items}",
                             outputs={"scores": (scores + [None] * n)[:n]})
        return {"scores": scores}


class ComplexityScorer(_Scorer):
    name = "complexity-scorer"
    description = "DEITA complexity scores: rank a row's `instructions` by difficulty, one score each."
    inputs = ("instructions",)
    items = "instructions"
    schema_title = "SchemaComplexityScorer"

    def check_row(self, row: dict[str, Any], params: ScorerParams) -> None:
        _check_list(row, "instructions")

    def format(self, row: dict[str, Any], params, rng: random.Random) -> list[Message]:
        return [{"role": "user", "content": render("complexity-scorer", instructions=row["instructions"])}]

    def parse(self, answer: str, row: dict[str, Any], params) -> dict[str, Any]:
        return {"scores": scores_by_index(answer, len(row["instructions"]))}


class QualityScorer(_Scorer):
    name = "quality-scorer"
    description = "DEITA quality scores: rank a row's `responses` to its `instruction` by quality, one score each."
    inputs = ("instruction", "responses")
    items = "responses"
    schema_title = "SchemaQualityScorer"

    def check_row(self, row: dict[str, Any], params) -> None:
        instruction = row.get("instruction")
        if not isinstance(instruction, str):
            raise RowError("instruction", "column 'instruction' must be a string")
        _check_list(row, "responses")

    def format(self, row: dict[str, Any], params, rng: random.Random) -> list[Message]:
        content = render("quality-scorer", instruction=row["instruction"], responses=row["responses"])
        return [{"role": "user", "content": content}]

    def parse(self, answer: str, row: dict[str, Any], params) -> dict[str, Any]:
        return {"scores": scores_by_index(answer, len(row["responses"]))}


TASKS = (ComplexityScorer(), QualityScorer())
