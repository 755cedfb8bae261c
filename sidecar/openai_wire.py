"""OpenAI's wire types, as the sidecar serves them: /v1/chat/completions, /v1/completions
(a raw prompt, as TGI's /generate) and /v1/embeddings (as /embed). Requests are pydantic
models; answers are built by the functions at the bottom from the engine's results.

Every option is honoured or refused with a 422 naming it; `logprobs` (and `top_logprobs`)
come from the distribution each token was chosen from, as TGI reports them."""

from __future__ import annotations

import base64
import math
import struct
import time
import uuid
from typing import Any, Literal

from pydantic import Field

from .params import MAX_TOP_N_TOKENS, GenerationResult, InvalidRequest, SamplingParams, Token
from .protocol import MAX_STOP_SEQUENCES, ROUTER, ChatMessage, GrammarSpec, _Wire

MAX_COMPLETION_CHOICES = 64  # prompts times `n` in one /v1/completions request
MAX_EMBEDDING_INPUTS = 2048  # OpenAI's own limit per request

class StreamOptions(_Wire):
    include_usage: bool = False


class OpenAIGeneration(_Wire):
    """The options OpenAI's chat and completions routes share; top_k and
    repetition_penalty are TGI's chat route's additions."""

    model: str | None = None  # any name: this server has one model
    max_tokens: int | None = Field(None, ge=1)
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
    response_format: GrammarSpec | None = None
    logit_bias: dict[str, float] | None = None
    user: str | None = None  # the caller's end user, for its own records: no effect on generation

    def _sampling(self, max_new_tokens: int | None, top_n_tokens: int) -> SamplingParams:
        if self.logit_bias:
            raise InvalidRequest("`logit_bias` is not supported")
        if self.stream_options and not self.stream:
            raise InvalidRequest("`stream_options` needs `stream`")
        stop = [self.stop] if isinstance(self.stop, str) else (self.stop or [])
        if len(stop) > MAX_STOP_SEQUENCES:
            raise InvalidRequest(f"at most {MAX_STOP_SEQUENCES} stop sequences")
        # OpenAI's (and TGI's chat route's) default is sampling at temperature 1; 0 is greedy
        return SamplingParams(
            max_new_tokens=max_new_tokens, temperature=self.temperature,
            top_p=self.top_p, top_k=self.top_k, repetition_penalty=self.repetition_penalty,
            frequency_penalty=self.frequency_penalty, presence_penalty=self.presence_penalty,
            stop=tuple(stop), seed=self.seed, do_sample=True,
            grammar=self.response_format.grammar() if self.response_format else None,
            top_n_tokens=top_n_tokens,
        )

    def choices(self, params: SamplingParams) -> list[SamplingParams]:
        """The `n` generations asked for: n seeds, else n copies of one seeded answer."""
        return [params if params.seed is None else params.replace(seed=params.seed + i) for i in range(self.n)]

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class ChatRequest(OpenAIGeneration):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=MAX_TOP_N_TOKENS)
    tools: list[Any] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None

    def plain_messages(self) -> list[dict[str, Any]]:
        return [m.model_dump(exclude_none=True) for m in self.messages]

    def sampling(self) -> SamplingParams:
        if self.tools:
            raise InvalidRequest("`tools` are not supported")
        if self.tool_choice not in (None, "none", "auto"):
            raise InvalidRequest("`tool_choice` is not supported: no tools")
        if self.top_logprobs is not None and not self.logprobs:
            raise InvalidRequest("`top_logprobs` needs `logprobs`")
        return self._sampling(self.max_completion_tokens or self.max_tokens, self.top_logprobs or 0)


class CompletionRequest(OpenAIGeneration):
    """OpenAI's legacy completions: a raw prompt, as TGI's /generate takes it."""

    prompt: str | list[str] | list[int] | list[list[int]]
    logprobs: int | None = Field(None, ge=0, le=MAX_TOP_N_TOKENS)
    echo: bool = False
    suffix: str | None = None
    best_of: int | None = None

    def prompts(self) -> list[str | list[int]]:
        if isinstance(self.prompt, str) or (self.prompt and isinstance(self.prompt[0], int)):
            prompts = [self.prompt]
        else:
            prompts = list(self.prompt)
        if not prompts or len(prompts) * self.n > MAX_COMPLETION_CHOICES:
            raise InvalidRequest(f"`prompt` must hold 1 to {MAX_COMPLETION_CHOICES} prompts (times `n`)")
        if self.stream and self.echo:
            raise InvalidRequest("`echo` is not supported with `stream`")
        return prompts

    def sampling(self) -> SamplingParams:
        if self.suffix:
            raise InvalidRequest("`suffix` is not supported")
        if self.best_of not in (None, self.n):
            raise InvalidRequest("`best_of` other than `n` is not supported")
        return self._sampling(self.max_tokens, self.logprobs or 0).replace(
            decoder_input_details=self.echo and self.logprobs is not None)



class EmbeddingsRequest(_Wire):
    input: str | list[str] = Field(min_length=1)
    model: str | None = None
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = None
    user: str | None = None

    def texts(self, hidden_size: int) -> list[str]:
        if self.dimensions not in (None, hidden_size):
            raise InvalidRequest(f"`dimensions` must be {hidden_size}, the model's: it cannot shorten its vectors")
        texts = [self.input] if isinstance(self.input, str) else self.input
        if len(texts) > MAX_EMBEDDING_INPUTS:
            raise InvalidRequest(f"at most {MAX_EMBEDDING_INPUTS} inputs")
        return texts


# ---- answers ----


def usage(input_tokens: int, output_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": input_tokens, "completion_tokens": output_tokens,
            "total_tokens": input_tokens + output_tokens}


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def _logprob(token: Token) -> dict[str, Any]:
    return {"token": token.text, "logprob": token.logprob, "bytes": list(token.text.encode())}


def chat_logprobs(tokens: list[Token]) -> dict[str, Any]:
    """A choice's `logprobs`: its text's tokens (special ones, such as the end of turn, left
    out), each with its `top_logprobs` alternatives."""
    return {"content": [{**_logprob(t), "top_logprobs": [_logprob(a) for a in t.top]}
                        for t in tokens if not t.special],
            "refusal": None}


def chat_completion(model: str, results: list[GenerationResult], *, logprobs: bool) -> dict[str, Any]:
    return {
        "id": new_id("chatcmpl"),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "system_fingerprint": ROUTER,
        "choices": [
            {"index": i, "message": {"role": "assistant", "content": r.completion_text},
             "logprobs": chat_logprobs(r.tokens) if logprobs else None, "finish_reason": r.openai_finish_reason}
            for i, r in enumerate(results)
        ],
        "usage": usage(results[0].input_tokens, sum(r.output_tokens for r in results)),
    }


def chat_chunk(id_: str, model: str, *, index: int = 0, text: str | None = None,
               logprobs: list[Token] | None = None, finish_reason: str | None = None,
               usage_: dict[str, int] | None = None, with_choice: bool = True) -> dict[str, Any]:
    # `role` and `tool_calls` in every delta: the text-generation client's chunk model requires them
    choices = [{"index": index, "delta": {"role": "assistant", "content": text, "tool_calls": None},
                "logprobs": None if logprobs is None else chat_logprobs(logprobs),
                "finish_reason": finish_reason}] if with_choice else []
    return {"id": id_, "object": "chat.completion.chunk", "created": int(time.time()), "model": model,
            "system_fingerprint": ROUTER, "choices": choices, "usage": usage_}


def completion_logprobs(tokens: list[Token], offset: int = 0) -> dict[str, Any]:
    """The legacy completions' `logprobs`: parallel lists; `text_offset` counts characters
    of the choice's text (the prompt's first, with `echo`), starting at `offset`."""
    offsets = []
    for t in tokens:
        offsets.append(offset)
        offset += 0 if t.special else len(t.text)
    return {
        "tokens": [t.text for t in tokens],
        "token_logprobs": [None if math.isnan(t.logprob) else t.logprob for t in tokens],  # the first prompt token
        "top_logprobs": [{a.text: a.logprob for a in t.top} for t in tokens],
        "text_offset": offsets,
    }


def completion_choice(index: int, result: GenerationResult, *, logprobs: bool, prompt: str = "") -> dict[str, Any]:
    """One choice; `prompt` is the echoed prompt's text."""
    return {"index": index, "text": prompt + result.completion_text,
            "logprobs": completion_logprobs(result.prefill + result.tokens) if logprobs else None,
            "finish_reason": result.openai_finish_reason}


def completion(model: str, choices: list[dict[str, Any]], results: list[GenerationResult], *,
               prompt_tokens: int) -> dict[str, Any]:
    return {"id": new_id("cmpl"), "object": "text_completion", "created": int(time.time()), "model": model,
            "system_fingerprint": ROUTER, "choices": choices,
            "usage": usage(prompt_tokens, sum(r.output_tokens for r in results))}


def completion_chunk(id_: str, model: str, *, index: int = 0, text: str = "", logprobs: list[Token] | None = None,
                     finish_reason: str | None = None, usage_: dict[str, int] | None = None,
                     with_choice: bool = True) -> dict[str, Any]:
    choices = [{"index": index, "text": text,
                "logprobs": None if logprobs is None else completion_logprobs(logprobs),
                "finish_reason": finish_reason}] if with_choice else []
    return {"id": id_, "object": "text_completion", "created": int(time.time()), "model": model,
            "system_fingerprint": ROUTER, "choices": choices, "usage": usage_}


def embeddings(model: str, vectors: list[list[float]], tokens: int, *, base64_: bool) -> dict[str, Any]:
    def encoded(v: list[float]) -> str | list[float]:
        # the openai SDK asks for base64 by default: little-endian float32
        return base64.b64encode(struct.pack(f"<{len(v)}f", *v)).decode() if base64_ else v

    return {"object": "list", "model": model,
            "data": [{"object": "embedding", "index": i, "embedding": encoded(v)} for i, v in enumerate(vectors)],
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}
