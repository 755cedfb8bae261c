"""`"dry_run": true` on a pipeline (docs/api.md, "Spend and rate limits"): the pipeline run
against clients that answer every call with nothing and count it (app.spend.DryRunClient),
every row going through every step (Executor's dry mode). Calls, input tokens (about 4
characters a token), the most output tokens they may produce, and their cost at the
backends' prices. An estimate: a step's later calls that depend on earlier answers are
counted with empty answers, and an explode counts one row (the real fan-out is unknown)."""

from __future__ import annotations

from typing import Any

from llm_clients import LLMClient

from ..spend import DryRunClient
from .check import Plan
from .execute import Executor
from .run import PipelineRun, clients


async def estimate(plan: Plan, rows: list[dict[str, Any]]) -> dict[str, Any]:
    dry: list[DryRunClient] = []

    def counting(llm: LLMClient, k: int) -> Any:
        dry.append(DryRunClient(llm))
        return dry[-1]

    run = PipelineRun(Executor(plan, clients(plan, counting), include_raw=False, dedup=None, dry=True), rows)
    async for _ in run.stream():
        pass
    cost = sum(c.input_tokens * getattr(c.config, "price_input_per_mtok", 0.0)
               + c.max_output_tokens * getattr(c.config, "price_output_per_mtok", 0.0) for c in dry) / 1e6
    return {"calls": sum(c.calls for c in dry), "input_tokens": sum(c.input_tokens for c in dry),
            "max_output_tokens": sum(c.max_output_tokens for c in dry), "cost_usd": round(cost, 9)}
