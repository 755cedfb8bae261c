"""generate-sentence-pair: sentence-transformers training data. From an anchor, a positive
sentence (a paraphrase, a similar sentence, a query for it or an answer to it) and, for
triplets, a negative one. One call per row (`num_generations` answers)."""

from __future__ import annotations

import random
from typing import Any, Literal

from pydantic import Field

from llm_clients.base import Message

from .base import ParseError
from .one_call import GenerationsParams, OneCallTask
from .parsing import markdown_sections
from .rendering import render
from .structured import DefaultStructuredOutput, DefaultStructuredOutputParams

# what the positive sentence must do to the anchor, per action
ACTIONS = {
    "paraphrase": "is a paraphrase of",
    "semantically-similar": "is semantically similar to",
    "query": "is a query that could be answered by",
    "answer": "is an answer to",
}


class SentencePairParams(GenerationsParams, DefaultStructuredOutputParams):
    action: Literal["paraphrase", "semantically-similar", "query", "answer"] = Field(
        ..., description="What the positive sentence is to the anchor.")
    triplet: bool = Field(False, description="Also write a negative sentence.")
    hard_negative: bool = Field(False, description="With triplet: a negative that is hard to tell from the positive.")
    context: str = Field("", max_length=20_000, description="Context the sentences should take into account.")


class GenerateSentencePair(DefaultStructuredOutput, OneCallTask[SentencePairParams]):
    name = "generate-sentence-pair"
    description = ("Sentence-transformers pairs or triplets: from an `anchor`, a `positive` sentence "
                   "(and with `triplet` a `negative` one).")
    inputs = ("anchor",)
    outputs = ("positive", "negative")
    Params = SentencePairParams

    def output_columns(self, params: SentencePairParams) -> tuple[str, ...]:
        return ("positive", "negative") if params.triplet else ("positive",)

    def format(self, row: dict[str, Any], params: SentencePairParams, rng: random.Random) -> list[Message]:
        system = render("generate-sentence-pair-system", action=ACTIONS[params.action], triplet=params.triplet,
                        hard_negative=params.hard_negative, has_context=bool(params.context))
        content = render("generate-sentence-pair", anchor=row["anchor"], context=params.context)
        return [{"role": "system", "content": system}, {"role": "user", "content": content}]

    def default_schema(self, params: SentencePairParams) -> dict[str, Any]:
        """distilabel's get_structured_output: `positive` (and `negative`) strings."""
        columns = self.output_columns(params)
        return {"properties": {c: {"title": c.capitalize(), "type": "string"} for c in columns},
                "required": list(columns), "title": "Schema", "type": "object"}

    def read_structured(self, value: dict[str, Any], row: dict[str, Any], params: SentencePairParams) -> dict[str, Any]:
        return {c: value[c] for c in self.output_columns(params)}

    def parse(self, answer: str, row: dict[str, Any], params: SentencePairParams) -> dict[str, Any]:
        sections = markdown_sections(answer)
        outputs = {c: sections.get(c) or None for c in self.output_columns(params)}
        missing = [f"'## {c.capitalize()}'" for c, text in outputs.items() if text is None]
        if missing:  # what was written is kept: a positive without its negative is still paid for
            raise ParseError(f"the answer has no {' or '.join(missing)} section", outputs=outputs)
        return outputs


TASKS = (GenerateSentencePair(),)
