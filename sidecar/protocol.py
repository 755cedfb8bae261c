"""The wire types: TGI's generate API (text-generation-inference's router, whose names the
`text-generation` client and the `tgi` provider use) and the embedding route; OpenAI's
routes have theirs in sidecar.openai_wire. Requests are pydantic models; answers are built
by the functions at the bottom from the engine's results."""

from __future__ import annotations

import json
import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from .params import (
    DEFAULT_MAX_NEW_TOKENS,
    MAX_TOP_N_TOKENS,
    GenerationResult,
    Grammar,
    InvalidRequest,
    SamplingParams,
    Token,
)

ROUTER = "synthserve-sidecar"  # /info's "router": how a client tells this server from a real TGI
MAX_STOP_SEQUENCES = 16


class _Wire(BaseModel):
    """A request body. An explicit null is the option left out (the `text-generation`
    client sends every option, null when unset); an option this server does not know is
    a 422 naming it, never ignored (TGI ignores them)."""

    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _nulls_are_absent(cls, data: Any) -> Any:
        return {k: v for k, v in data.items() if v is not None} if isinstance(data, dict) else data


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
    top_n_tokens: int = Field(0, ge=0, le=MAX_TOP_N_TOKENS)
    grammar: GrammarSpec | None = None
    adapter_id: str | None = None

    def sampling(self, *, stream: bool = False) -> SamplingParams:
        if self.best_of not in (None, 1):
            raise InvalidRequest("`best_of` > 1 is not supported")
        if self.typical_p is not None and self.typical_p < 1.0:
            raise InvalidRequest("`typical_p` is not supported")
        if self.watermark:
            raise InvalidRequest("`watermark` is not supported")
        if self.adapter_id:
            raise InvalidRequest("`adapter_id` is not supported: this server has no adapters")
        if self.decoder_input_details and (stream or not self.details):
            # as TGI: the prompt's tokens are part of the details, which a stream has none of
            raise InvalidRequest("`decoder_input_details` needs `details` and no streaming")
        if self.top_n_tokens and not (stream or self.details):
            raise InvalidRequest("`top_n_tokens` needs `details` (or streaming)")
        return SamplingParams(
            max_new_tokens=self.max_new_tokens, temperature=self.temperature, top_p=self.top_p,
            top_k=self.top_k, repetition_penalty=self.repetition_penalty,
            frequency_penalty=self.frequency_penalty, stop=tuple(self.stop), seed=self.seed,
            do_sample=self.do_sample, grammar=self.grammar.grammar() if self.grammar else None,
            top_n_tokens=self.top_n_tokens, decoder_input_details=self.decoder_input_details,
        )


class GenerateRequest(_Wire):
    inputs: str
    parameters: GenerateParameters = Field(default_factory=GenerateParameters)
    stream: bool = False


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: str
    content: str | list[dict[str, Any]] | None = None


class ChatTokenizeRequest(_Wire):
    model: str | None = None
    messages: list[ChatMessage] = Field(min_length=1)

    def plain_messages(self) -> list[dict[str, Any]]:
        return [m.model_dump(exclude_none=True) for m in self.messages]


class TokenizeRequest(_Wire):
    inputs: str
    # TGI's /tokenize takes a whole /generate body; no parameter changes the tokens
    parameters: GenerateParameters | None = None


class EmbedRequest(_Wire):
    inputs: str | list[str | list[ChatMessage]]
    normalize: bool = False  # TEI normalises by default; docs/api.md says not unless asked

    def items(self) -> list[str | list[dict[str, Any]]]:
        items = [self.inputs] if isinstance(self.inputs, str) else self.inputs
        return [x if isinstance(x, str) else [m.model_dump(exclude_none=True) for m in x] for x in items]


# ---- answers ----


def error_body(message: str, error_type: Literal["validation", "overloaded", "generation", "unavailable"]) -> dict:
    return {"error": message, "error_type": error_type}


def token_json(token: Token) -> dict[str, Any]:
    return {"id": token.id, "text": token.text, "logprob": token.logprob, "special": token.special}


def prefill_json(token: Token) -> dict[str, Any]:
    # TGI's PrefillToken: no `special`; the first token's logprob is null
    return {"id": token.id, "text": token.text, "logprob": None if math.isnan(token.logprob) else token.logprob}


def top_tokens_json(token: Token) -> list[dict[str, Any]]:
    return [token_json(t) for t in token.top]


def generate_response(result: GenerationResult, *, details: bool, top_n_tokens: int = 0,
                      prefix: str = "") -> dict[str, Any]:
    body: dict[str, Any] = {"generated_text": prefix + result.text}
    if details:
        body["details"] = {
            "finish_reason": result.finish_reason,
            "generated_tokens": result.output_tokens,
            "seed": result.seed,
            "input_length": result.input_tokens,  # not TGI's: /generate has no prompt count there
            "prefill": [prefill_json(t) for t in result.prefill],
            "tokens": [token_json(t) for t in result.tokens],
            "top_tokens": [top_tokens_json(t) for t in result.tokens] if top_n_tokens else None,
            "best_of_sequences": None,
        }
    return body


def stream_event(index: int, token: Token, result: GenerationResult | None = None, *, top_n_tokens: int = 0,
                 prefix: str = "") -> dict[str, Any]:
    """One `/generate_stream` event; the last carries the whole text and the details."""
    return {
        "index": index,
        "token": token_json(token),
        "top_tokens": top_tokens_json(token) if top_n_tokens else None,
        "generated_text": None if result is None else prefix + result.text,
        "details": None if result is None else {
            "finish_reason": result.finish_reason,
            "generated_tokens": result.output_tokens,
            "seed": result.seed,
            "input_length": result.input_tokens,
        },
    }
