"""The wire types: TGI's generate API (text-generation-inference's router, whose names the
`text-generation` client and the `tgi` provider use), its OpenAI-compatible chat route and
the embedding route. Requests are pydantic models; answers are built by the functions at
the bottom from the engine's results."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from .params import DEFAULT_MAX_NEW_TOKENS, GenerationResult, Grammar, InvalidRequest, SamplingParams, Token

ROUTER = "synthserve-sidecar"  # /info's "router": how a client tells this server from a real TGI
MAX_STOP_SEQUENCES = 16


class _Wire(BaseModel):
    model_config = ConfigDict(extra="ignore")  # as TGI (serde): unknown fields are ignored


class GrammarSpec(_Wire):
    """TGI's `grammar` (and its chat route's `response_format`): `{"type": "json", "value":
    schema}` or `{"type": "regex", "value": pattern}`; and OpenAI's `response_format`:
    `{"type": "json_schema", "json_schema": {"name", "schema"}}`, `{"type": "json_object"}`
    (any object) or `{"type": "text"}` (no constraint)."""

    type: Literal["json", "regex", "json_schema", "json_object", "text"]
    value: Any = None
    json_schema: dict[str, Any] | None = None

    def grammar(self) -> Grammar | None:
        if self.type == "text":
            return None
        if self.type == "json_object":
            return Grammar.json_schema({"type": "object"})
        if self.type == "regex":
            if not isinstance(self.value, str) or not self.value:
                raise InvalidRequest("a regex grammar's `value` must be a non-empty string")
            return Grammar("regex", self.value)
        if self.type == "json_schema":  # OpenAI's place for it, or TGI's (`value`)
            spec = self.json_schema if self.json_schema is not None else self.value
            schema = spec.get("schema") if isinstance(spec, dict) else None
            if schema is None:
                raise InvalidRequest("a json_schema response format needs `json_schema.schema`")
        else:
            schema = self.value
            if isinstance(schema, str):  # TGI takes the schema as JSON text too
                try:
                    schema = json.loads(schema)
                except ValueError:
                    raise InvalidRequest("a json grammar's `value` must be a JSON schema") from None
        if not isinstance(schema, dict | bool):
            raise InvalidRequest("a json grammar's `value` must be a JSON schema (an object)")
        return Grammar.json_schema(schema)


class GenerateParameters(_Wire):
    max_new_tokens: int | None = DEFAULT_MAX_NEW_TOKENS  # TGI's is 100; docs/api.md says 256
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    do_sample: bool = False
    repetition_penalty: float | None = None
    frequency_penalty: float | None = None
    stop: list[str] = Field(default_factory=list, max_length=MAX_STOP_SEQUENCES)
    seed: int | None = None
    details: bool = False
    decoder_input_details: bool = False
    return_full_text: bool | None = False
    truncate: int | None = Field(None, ge=1)
    best_of: int | None = None
    typical_p: float | None = None
    watermark: bool = False
    top_n_tokens: int | None = None
    grammar: GrammarSpec | None = None
    adapter_id: str | None = None

    def sampling(self) -> SamplingParams:
        if self.best_of not in (None, 1):
            raise InvalidRequest("`best_of` > 1 is not supported")
        if self.typical_p is not None and self.typical_p < 1.0:
            raise InvalidRequest("`typical_p` is not supported")
        return SamplingParams(
            max_new_tokens=self.max_new_tokens, temperature=self.temperature, top_p=self.top_p,
            top_k=self.top_k, repetition_penalty=self.repetition_penalty,
            frequency_penalty=self.frequency_penalty, stop=tuple(self.stop), seed=self.seed,
            do_sample=self.do_sample, grammar=self.grammar.grammar() if self.grammar else None,
        )


class GenerateRequest(_Wire):
    inputs: str
    parameters: GenerateParameters = Field(default_factory=GenerateParameters)
    stream: bool = False


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: str
    content: str | list[dict[str, Any]] | None = None


class StreamOptions(_Wire):
    include_usage: bool = False


class ChatRequest(_Wire):
    model: str | None = None
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    repetition_penalty: float | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    n: int = Field(1, ge=1, le=64)  # as a task's num_generations
    stream: bool = False
    stream_options: StreamOptions | None = None
    tools: list[Any] | None = None
    response_format: GrammarSpec | None = None

    def plain_messages(self) -> list[dict[str, Any]]:
        return [m.model_dump(exclude_none=True) for m in self.messages]

    def sampling(self) -> SamplingParams:
        if self.tools:
            raise InvalidRequest("`tools` are not supported")
        stop = [self.stop] if isinstance(self.stop, str) else (self.stop or [])
        if len(stop) > MAX_STOP_SEQUENCES:
            raise InvalidRequest(f"at most {MAX_STOP_SEQUENCES} stop sequences")
        # OpenAI's (and TGI's chat route's) default is sampling at temperature 1; 0 is greedy
        return SamplingParams(
            max_new_tokens=self.max_completion_tokens or self.max_tokens, temperature=self.temperature,
            top_p=self.top_p, top_k=self.top_k, repetition_penalty=self.repetition_penalty,
            frequency_penalty=self.frequency_penalty, presence_penalty=self.presence_penalty,
            stop=tuple(stop), seed=self.seed, do_sample=True,
            grammar=self.response_format.grammar() if self.response_format else None,
        )


class ChatTokenizeRequest(_Wire):
    messages: list[ChatMessage] = Field(min_length=1)

    def plain_messages(self) -> list[dict[str, Any]]:
        return [m.model_dump(exclude_none=True) for m in self.messages]


class TokenizeRequest(_Wire):
    inputs: str


class EmbedRequest(_Wire):
    inputs: str | list[str | list[ChatMessage]]
    normalize: bool = False  # TEI normalises by default; API.md says not unless asked

    def items(self) -> list[str | list[dict[str, Any]]]:
        items = [self.inputs] if isinstance(self.inputs, str) else self.inputs
        return [x if isinstance(x, str) else [m.model_dump(exclude_none=True) for m in x] for x in items]


# ---- answers ----


def error_body(message: str, error_type: Literal["validation", "overloaded", "generation", "unavailable"]) -> dict:
    return {"error": message, "error_type": error_type}


def token_json(token: Token) -> dict[str, Any]:
    return {"id": token.id, "text": token.text, "logprob": token.logprob, "special": token.special}


def generate_response(result: GenerationResult, *, details: bool, prefix: str = "") -> dict[str, Any]:
    body: dict[str, Any] = {"generated_text": prefix + result.text}
    if details:
        body["details"] = {
            "finish_reason": result.finish_reason,
            "generated_tokens": result.output_tokens,
            "seed": result.seed,
            "input_length": result.input_tokens,  # not TGI's: /generate has no prompt count there
            "prefill": [],
            "tokens": [token_json(t) for t in result.tokens],
            "top_tokens": None,
            "best_of_sequences": None,
        }
    return body


def stream_event(index: int, token: Token, result: GenerationResult | None = None, *,
                 prefix: str = "") -> dict[str, Any]:
    """One `/generate_stream` event; the last carries the whole text and the details."""
    return {
        "index": index,
        "token": token_json(token),
        "top_tokens": None,
        "generated_text": None if result is None else prefix + result.text,
        "details": None if result is None else {
            "finish_reason": result.finish_reason,
            "generated_tokens": result.output_tokens,
            "seed": result.seed,
            "input_length": result.input_tokens,
        },
    }


def chat_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex}"


def usage(input_tokens: int, output_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": input_tokens, "completion_tokens": output_tokens,
            "total_tokens": input_tokens + output_tokens}


def chat_completion(model: str, results: list[GenerationResult]) -> dict[str, Any]:
    return {
        "id": chat_id(),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "system_fingerprint": ROUTER,
        "choices": [
            {"index": i, "message": {"role": "assistant", "content": r.completion_text},
             "logprobs": None, "finish_reason": r.openai_finish_reason}
            for i, r in enumerate(results)
        ],
        "usage": usage(results[0].input_tokens, sum(r.output_tokens for r in results)),
    }


def chat_chunk(id_: str, model: str, *, content: str | None = None, finish_reason: str | None = None,
               usage_: dict[str, int] | None = None, with_choice: bool = True) -> dict[str, Any]:
    # `role` and `tool_calls` in every delta: the text-generation client's chunk model requires them
    choices = [{"index": 0, "delta": {"role": "assistant", "content": content, "tool_calls": None},
                "logprobs": None, "finish_reason": finish_reason}] if with_choice else []
    return {"id": id_, "object": "chat.completion.chunk", "created": int(time.time()), "model": model,
            "system_fingerprint": ROUTER, "choices": choices, "usage": usage_}
