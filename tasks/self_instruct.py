"""self-instruct (Self-Instruct, arXiv 2212.10560): from a context, the queries an AI
application could receive. One call per row (`num_generations` answers)."""

from __future__ import annotations

import random
from typing import Any

from pydantic import Field

from llm_clients.base import Message

from .base import ParseError
from .one_call import GenerationsParams, OneCallTask
from .parsing import line_list
from .rendering import render

DEFAULT_CRITERIA = """\
1. Use a wide range of verbs and sentence structures, so that the queries differ from one another.
2. Keep each query to one or two sentences.
3. Make each query self-contained: it must make sense without the context or the other queries.
4. Mix questions with imperative requests."""


class SelfInstructParams(GenerationsParams):
    num_instructions: int = Field(5, ge=1, le=100, description="How many queries to ask for (and keep at most).")
    criteria_for_query_generation: str = Field(
        DEFAULT_CRITERIA, min_length=1, max_length=20_000,
        description="The criteria section of the prompt. The answer format (one query per line, no "
                    "numbering), which the parser relies on, follows it whatever the criteria.")
    application_description: str = Field(
        "AI assistant", min_length=1, max_length=20_000, description="The AI application the queries are for.")


class SelfInstruct(OneCallTask[SelfInstructParams]):
    name = "self-instruct"
    description = ("Self-Instruct: write `num_instructions` user queries that an AI application could "
                   "receive about the `input` context.")
    inputs = ("input",)
    outputs = ("instructions",)
    Params = SelfInstructParams

    def format(self, row: dict[str, Any], params: SelfInstructParams, rng: random.Random) -> list[Message]:
        prompt = render("self-instruct", num_instructions=params.num_instructions, input=row["input"],
                        criteria=params.criteria_for_query_generation,
                        application_description=params.application_description)
        return [{"role": "user", "content": prompt}]

    def parse(self, answer: str, row: dict[str, Any], params: SelfInstructParams) -> dict[str, Any]:
        instructions = line_list(answer, params.num_instructions)
        if not instructions:
            raise ParseError("the answer holds no instruction")
        return {"instructions": instructions}


TASKS = (SelfInstruct(),)
