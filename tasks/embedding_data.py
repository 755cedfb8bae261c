"""Training data for embedding models (Improving Text Embeddings with Large Language
Models, arXiv 2401.00368): brainstorm tasks of a category, then write one example per task
(or, for the triplet generators, per generation) as a JSON object.

Attributes left null in params are drawn per row from `ctx.rng()`, so the same request
gives the same prompts whatever the concurrency. Answers are parsed as JSON, else as a
Python literal (distilabel uses `eval`, which runs code and fails on `true`/`null`); a
missing key is null.

The triplet generators ask for up to TRIPLETS_PER_CALL triplets in one call where the
backend has a native `n` (they then share the sampled attributes of the block's first
generation, as distilabel's generations share one prompt); elsewhere one call each.
"""

from __future__ import annotations

import random
from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator

from llm_clients.base import LLMError, Message

from .base import ParseError, Task, TaskParams, TaskRun
from .one_call import GenerationsParams, OneCallTask
from .parsing import json_list, json_object, pick_keys
from .rendering import render

Category = Literal["text-retrieval", "text-matching-short", "text-matching-long", "text-classification"]

QUERY_TYPES = ("extremely long-tail", "long-tail", "common")
QUERY_LENGTHS = ("less than 5 words", "5 to 15 words", "at least 10 words")
DIFFICULTIES = ("high school", "college", "PhD")
CLARITIES = ("clear", "understandable with some effort", "ambiguous")
NUM_WORDS = (50, 100, 200, 300, 400, 500)
UNITS = ("sentence", "phrase", "passage")
TRIPLET_DIFFICULTIES = ("elementary school", "high school", "college")
HIGH_SCORES = ("4", "4.5", "5")
LOW_SCORES = ("2.5", "3", "3.5")
TRIPLETS_PER_CALL = 16

LANGUAGE = Field("English", min_length=1, max_length=64, description="Language of the generated text.")


def sample(rng: random.Random, params: TaskParams, choices: dict[str, tuple]) -> dict[str, Any]:
    """Each attribute from params, or drawn (in the order given) when null."""
    return {name: getattr(params, name) if getattr(params, name) is not None else rng.choice(options)
            for name, options in choices.items()}


# ---- embedding-task-generator ----

class TaskGeneratorParams(TaskParams):
    category: Category = Field(..., description="Which kind of tasks to brainstorm.")
    flatten_tasks: bool = Field(False, description="One row per generated task (`task`) instead of a `tasks` list.")
    num_generations: int = Field(1, ge=1, le=10_000, description="How many brainstorms (calls).")


class EmbeddingTaskGenerator(Task):
    name = "embedding-task-generator"
    description = ("Brainstorm about 20 embedding-data tasks of a `category` (as a `tasks` list, or one "
                   "row per `task` with `flatten_tasks`).")
    outputs = ("tasks", "task")
    generator = True
    Params = TaskGeneratorParams

    def output_columns(self, params: TaskGeneratorParams) -> tuple[str, ...]:
        return ("task",) if params.flatten_tasks else ("tasks",)

    def num_units(self, params: TaskGeneratorParams, rows: list[dict]) -> int:
        return params.num_generations

    def rows_per_unit(self, params: TaskGeneratorParams) -> int | None:
        return None if params.flatten_tasks else 1

    def format(self, row: dict[str, Any], params: TaskGeneratorParams, rng: random.Random) -> list[Message]:
        return [{"role": "user", "content": render("embedding-task-generator", category=params.category)}]

    def parse(self, answer: str, row: dict[str, Any], params: TaskGeneratorParams) -> dict | list[dict]:
        tasks = [t.strip() for t in json_list(answer) if isinstance(t, str) and t.strip()]
        if not tasks:
            raise ParseError("the answer's JSON list holds no task")
        if params.flatten_tasks:
            return [{"task": t} for t in tasks]
        return {"tasks": tasks}


# ---- one example per task ----

class _JsonTask(OneCallTask):
    """One call; the answer's JSON object gives the output columns."""

    template: ClassVar[str]
    choices: ClassVar[dict[str, tuple]] = {}

    def variables(self, row: dict[str, Any], params: TaskParams, rng: random.Random) -> dict[str, Any]:
        return {"task": row.get("task"), **params.model_dump(exclude={"seed"}), **sample(rng, params, self.choices)}

    def format(self, row: dict[str, Any], params: TaskParams, rng: random.Random) -> list[Message]:
        return [{"role": "user", "content": render(self.template, **self.variables(row, params, rng))}]

    def parse(self, answer: str, row: dict[str, Any], params: TaskParams) -> dict[str, Any]:
        return pick_keys(json_object(answer), self.outputs)


class TextRetrievalParams(GenerationsParams):
    language: str = LANGUAGE
    query_type: Literal[QUERY_TYPES] | None = Field(None, description="null = drawn per row.")  # type: ignore[valid-type]
    query_length: Literal[QUERY_LENGTHS] | None = Field(None, description="null = drawn per row.")  # type: ignore[valid-type]
    difficulty: Literal[DIFFICULTIES] | None = Field(None, description="null = drawn per row.")  # type: ignore[valid-type]
    clarity: Literal[CLARITIES] | None = Field(None, description="null = drawn per row.")  # type: ignore[valid-type]
    num_words: Literal[NUM_WORDS] | None = Field(None, description="null = drawn per row.")  # type: ignore[valid-type]


class TextRetrievalData(_JsonTask):
    name = "text-retrieval-data"
    description = "For a retrieval `task`: a user query, a positive document and a hard negative document."
    inputs = ("task",)
    outputs = ("user_query", "positive_document", "hard_negative_document")
    Params = TextRetrievalParams
    template = "text-retrieval-data"
    choices = {"query_type": QUERY_TYPES, "query_length": QUERY_LENGTHS, "difficulty": DIFFICULTIES,
               "clarity": CLARITIES, "num_words": NUM_WORDS}


class LanguageParams(GenerationsParams):
    language: str = LANGUAGE


class ShortTextMatchingData(_JsonTask):
    name = "short-text-matching-data"
    description = "For a short-text matching `task`: an input and a matching positive document, both short."
    inputs = ("task",)
    outputs = ("input", "positive_document")
    Params = LanguageParams
    template = "short-text-matching-data"


class LongTextMatchingData(_JsonTask):
    name = "long-text-matching-data"
    description = "For a long-text matching `task`: an input and a matching positive document, both long."
    inputs = ("task",)
    outputs = ("input", "positive_document")
    Params = LanguageParams
    template = "long-text-matching-data"


class TextClassificationParams(GenerationsParams):
    language: str = LANGUAGE
    difficulty: Literal[DIFFICULTIES] | None = Field(None, description="null = drawn per row.")  # type: ignore[valid-type]
    clarity: Literal[CLARITIES] | None = Field(None, description="null = drawn per row.")  # type: ignore[valid-type]


class TextClassificationData(_JsonTask):
    name = "text-classification-data"
    description = "For a classification `task`: an input text, its label and a misleading label."
    inputs = ("task",)
    outputs = ("input_text", "label", "misleading_label")
    Params = TextClassificationParams
    template = "text-classification-data"
    choices = {"difficulty": DIFFICULTIES, "clarity": CLARITIES}


# ---- triplet generators ----

def _score(value: Any) -> Any:
    # accept 4.5 as well as "4.5"
    return f"{value:g}" if isinstance(value, int | float) and not isinstance(value, bool) else value


class _TripletParams(TaskParams):
    unit: Literal[UNITS] | None = Field(None, description="null = drawn per row.")  # type: ignore[valid-type]
    difficulty: Literal[TRIPLET_DIFFICULTIES] | None = Field(None, description="null = drawn per row.")  # type: ignore[valid-type]
    high_score: Literal[HIGH_SCORES] | None = Field(
        None, description="Similarity of S1 and S2 (1-5). null = drawn per row.")  # type: ignore[valid-type]
    low_score: Literal[LOW_SCORES] | None = Field(
        None, description="Similarity of S1 and S3 (1-5). null = drawn per row.")  # type: ignore[valid-type]
    num_generations: int = Field(1, ge=1, le=10_000, description="How many triplets (calls).")

    @field_validator("high_score", "low_score", mode="before")
    @classmethod
    def _scores(cls, value):
        return _score(value)


class MonolingualTripletParams(_TripletParams):
    language: str = LANGUAGE


class BitextParams(_TripletParams):
    source_language: str = Field("English", min_length=1, max_length=64, description="Language of S1.")
    target_language: str = Field(..., min_length=1, max_length=64, description="Language of S2 and S3.")


class _TripletGenerator(_JsonTask):
    outputs = ("S1", "S2", "S3")
    generator = True
    choices = {"unit": UNITS, "difficulty": TRIPLET_DIFFICULTIES, "high_score": HIGH_SCORES,
               "low_score": LOW_SCORES}

    def num_units(self, params: _TripletParams, rows: list[dict]) -> int:
        return params.num_generations

    # num_generations counts units here, not answers to one prompt: a unit is Task's
    rows_per_unit = Task.rows_per_unit
    failed_outputs = Task.failed_outputs
    run = Task.run

    def unit_groups(self, run: TaskRun, units: list[int]) -> list[list[int]]:
        if not run.llm.native_n:
            return super().unit_groups(run, units)
        blocks: dict[int, list[int]] = {}  # fixed blocks of indexes: the same prompts whatever the job chunks
        for i in units:
            blocks.setdefault(i // TRIPLETS_PER_CALL, []).append(i)
        return list(blocks.values())

    async def run_group(self, run: TaskRun, group: list[int]) -> list[tuple[int, list[dict[str, Any]]]]:
        if not run.llm.native_n:
            return await super().run_group(run, group)
        ctx = run.context(group[0] // TRIPLETS_PER_CALL * TRIPLETS_PER_CALL)
        try:
            answers = await ctx.chat_n(self.format({}, run.params, ctx.rng()), len(group))
            results: list = [self.parse_one(a, {}, run.params) for a in answers]
        except LLMError as exc:
            results = [exc] * len(group)
        run.usage = run.usage + ctx.usage
        return [(i, self.rows_of({}, r, ctx, run)) for i, r in zip(group, results)]


class MonolingualTriplet(_TripletGenerator):
    name = "monolingual-triplet"
    description = "Triplets S1, S2, S3 in one language: S1-S2 similarity high_score, S1-S3 low_score."
    Params = MonolingualTripletParams
    template = "monolingual-triplet"


class BitextRetrieval(_TripletGenerator):
    name = "bitext-retrieval"
    description = ("Bitext triplets: S1 in the source language, S2 and S3 translations of high and low "
                   "quality in the target language.")
    Params = BitextParams
    template = "bitext-retrieval"


TASKS = (EmbeddingTaskGenerator(), TextRetrievalData(), ShortTextMatchingData(), LongTextMatchingData(),
         TextClassificationData(), MonolingualTriplet(), BitextRetrieval())
