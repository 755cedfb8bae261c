"""The one-call tasks that parse their answer (self-instruct, the scorers,
generate-sentence-pair, the embedding-data tasks), with distilabel's `num_generations`
and `group_generations`: several answers to one prompt (one call with the backend's native
`n` where it has one), each parsed on its own.

A generation that cannot be parsed fails its own row; grouped, the row keeps every answer
read (the failed one's place holds its empty outputs) and is flagged `parse_error`.
"""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import Field

from .base import ParseError, RowContext, Task, TaskParams


class GenerationsParams(TaskParams):
    num_generations: int = Field(
        1, ge=1, le=64, description="Answers per row (one call with the backend's native `n` where it has one).")
    group_generations: bool = Field(False, description="One row with list outputs instead of one row per generation.")


G = TypeVar("G", bound=GenerationsParams)


class OneCallTask(Task[G]):
    Params: type[G] = GenerationsParams  # type: ignore[assignment]

    def rows_per_unit(self, params: G) -> int:
        return 1 if params.group_generations else params.num_generations

    def empty_outputs(self, row: dict[str, Any], params: G) -> dict[str, Any]:
        """The outputs of one generation that failed; columns left out are null."""
        return {}

    def failed_outputs(self, row: dict[str, Any], params: G) -> dict[str, Any]:
        empty = self.empty_outputs(row, params)
        if params.group_generations:
            return {c: [empty.get(c)] * params.num_generations for c in self.output_columns(params)}
        return empty

    def parse_one(self, answer: str, row: dict[str, Any], params: G) -> dict[str, Any] | ParseError:
        try:
            return self.parse(answer, row, params)
        except ParseError as exc:
            return exc

    async def run(self, ctx: RowContext, row: dict[str, Any], params: G) -> dict | list:
        messages = self.format(row, params, ctx.rng())
        k = params.num_generations
        answers = [await ctx.chat(messages)] if k == 1 else await ctx.chat_n(messages, k)
        results = [self.parse_one(a, row, params) for a in answers]
        if not params.group_generations:
            return results  # a ParseError among them fails its own row only
        failed = [j for j, r in enumerate(results) if isinstance(r, ParseError)]
        empty = self.empty_outputs(row, params)
        read = [(r.outputs or empty) if isinstance(r, ParseError) else r for r in results]
        grouped = {c: [r.get(c) for r in read] for c in self.output_columns(params)}
        if failed:
            which = ", ".join(str(j + 1) for j in failed)
            raise ParseError(f"generation {which} of {k}: {results[failed[0]]}", outputs=grouped)
        return grouped
