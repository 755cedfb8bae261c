"""Pydantic models at the HTTP edge."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from llm_clients.base import GenerationKwargs


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LLMSpec(_Body):
    backend: str | None = Field(None, description="A backend configured on the server (default: `[llm] default_backend`).")
    model: str | None = Field(None, description="Override the backend's model.")
    generation_kwargs: GenerationKwargs = GenerationKwargs()


class TaskRequest(_Body):
    rows: list[dict[str, Any]] = Field(default_factory=list, description="Input rows; absent or empty for generator tasks.")
    params: dict[str, Any] = Field(default_factory=dict, description="The task's params (see `params_schema`).")
    llm: LLMSpec = LLMSpec()
    include_raw: bool = Field(True, description="Keep `metadata.raw_input` and `raw_output`.")
    stream: bool = Field(False, description="Answer with server-sent events (also with `Accept: text/event-stream`).")
    stream_tokens: bool = Field(False, description="text/chat-generation over SSE: `token` events as text is produced.")
    cache: bool | Literal["refresh"] = Field(True, description=(
        "The LLM-call cache: `false` neither reads nor writes it, `\"refresh\"` calls again and overwrites."))
    dry_run: bool = Field(False, description=(
        "Answer an estimate `{calls, input_tokens, max_output_tokens, cost_usd}` instead; no call is made."))


class UsageOut(BaseModel):
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = Field(0.0, description="At the backend's prices; answers from the cache cost nothing.")
    cached_calls: int = Field(0, description="Calls answered from the LLM-call cache.")


class TaskResponse(BaseModel):
    task: str
    rows: list[dict[str, Any]] = Field(description="Input columns, output columns, `model_name`, `metadata`, `error`.")
    failed: int
    usage: UsageOut
    seed: int = Field(description="The request's `params.seed`, drawn when omitted: send it back to repeat the run.")


class TaskInfo(BaseModel):
    name: str
    description: str
    inputs: list[str]
    outputs: list[str]
    generator: bool


class TaskDetail(TaskInfo):
    params_schema: dict[str, Any]


class TaskList(BaseModel):
    tasks: list[TaskInfo]


class Health(BaseModel):
    status: str = "ok"
