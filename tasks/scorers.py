"""complexity-scorer and quality-scorer (DEITA, arXiv 2312.15685): rank a list of
instructions by complexity, or of responses by quality, in one call per row. Scores are
read by the index in `[i] Score: x`, never by line position."""

from __future__ import annotations

import random
from typing import Any

from llm_clients.base import Message

from .base import RowError, Task
from .parsing import scores_by_index
from .rendering import render

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


class ComplexityScorer(Task):
    name = "complexity-scorer"
    description = "DEITA complexity scores: rank a row's `instructions` by difficulty, one score each."
    inputs = ("instructions",)
    outputs = ("scores",)

    def check_row(self, row: dict[str, Any], params) -> None:
        _check_list(row, "instructions")

    def format(self, row: dict[str, Any], params, rng: random.Random) -> list[Message]:
        return [{"role": "user", "content": render("complexity-scorer", instructions=row["instructions"])}]

    def parse(self, answer: str, row: dict[str, Any], params) -> dict[str, Any]:
        return {"scores": scores_by_index(answer, len(row["instructions"]))}


class QualityScorer(Task):
    name = "quality-scorer"
    description = "DEITA quality scores: rank a row's `responses` to its `instruction` by quality, one score each."
    inputs = ("instruction", "responses")
    outputs = ("scores",)

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
