"""The engine's request and result types, and its errors. No torch here: the HTTP layer
(sidecar.app) and the in-process provider (llm_clients.local) build and read these
without importing the model stack.

    EngineError
    ├── InvalidRequest     a request the engine cannot run (too long, bad params)  -> 422
    └── Overloaded         the bounded queue is full                                -> 429
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, Literal

# the engine's limits when none are given (TGI's launcher has the same options)
MAX_BATCH_SIZE = 32
MAX_CONCURRENT_REQUESTS = 128
# max_new_tokens when a request gives none, on every route and the local backend (docs/api.md,
# "Defaults that apply everywhere"): a small model left to the rest of its context rambles for minutes
DEFAULT_MAX_NEW_TOKENS = 256
MAX_TOP_N_TOKENS = 20  # alternatives a token may come with (OpenAI's top_logprobs limit)

FinishReason = Literal["length", "eos_token", "stop_sequence"]


class EngineError(Exception):
    pass


class InvalidRequest(EngineError):
    pass


class Overloaded(EngineError):
    def __init__(self, message: str = "model is overloaded", *, retry_after: float = 1.0):
        super().__init__(message)
        self.retry_after = retry_after


@dataclass(frozen=True, slots=True)
class Grammar:
    """What a generation must match (TGI's `grammar`): a JSON schema, as compact JSON text
    (hashable: the compiled-grammar cache's key; keys keep their order, which is the order
    the properties are generated in), or a regular expression."""

    kind: Literal["json", "regex"]
    value: str

    @classmethod
    def json_schema(cls, schema: dict[str, Any] | bool) -> Grammar:
        return cls("json", json.dumps(schema, separators=(",", ":")))


@dataclass(frozen=True, slots=True)
class SamplingParams:
    """One request's generation options (TGI's parameter names). Sampling happens when
    `do_sample` is set or when a warper is (temperature != 1, top_k, top_p < 1), as in TGI;
    temperature 0 means greedy."""

    max_new_tokens: int | None = None  # None: DEFAULT_MAX_NEW_TOKENS, or the rest of the context if less
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    repetition_penalty: float | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    stop: tuple[str, ...] = ()
    seed: int | None = None
    do_sample: bool = False
    grammar: Grammar | None = None  # the output is constrained to it, token by token
    top_n_tokens: int = 0  # each output token comes with this many most likely alternatives
    decoder_input_details: bool = False  # the prompt's tokens come back with their logprobs (`prefill`)

    def __post_init__(self) -> None:
        checks = [
            (self.max_new_tokens is None or self.max_new_tokens >= 1, "max_new_tokens must be at least 1"),
            (self.temperature is None or self.temperature >= 0, "temperature must be >= 0"),
            (self.top_p is None or 0 < self.top_p <= 1, "top_p must be in (0, 1]"),
            (self.top_k is None or self.top_k >= 0, "top_k must be >= 0"),
            (self.repetition_penalty is None or self.repetition_penalty > 0, "repetition_penalty must be > 0"),
            (all(self.stop), "stop sequences must not be empty"),
            (0 <= self.top_n_tokens <= MAX_TOP_N_TOKENS, f"top_n_tokens must be in [0, {MAX_TOP_N_TOKENS}]"),
        ]
        for ok, message in checks:
            if not ok:
                raise InvalidRequest(message)
        if not isinstance(self.stop, tuple):
            object.__setattr__(self, "stop", tuple(self.stop))

    def replace(self, **changes) -> SamplingParams:
        return dataclasses.replace(self, **changes)

    @property
    def sampling(self) -> bool:
        if self.temperature == 0:
            return False
        return (self.do_sample or (self.temperature is not None and self.temperature != 1.0)
                or bool(self.top_k) or (self.top_p is not None and self.top_p < 1.0))


@dataclass(frozen=True, slots=True)
class Token:
    id: int
    text: str  # the text this token adds (incremental detokenization, as TGI streams it)
    logprob: float  # NaN for a prompt's first token, which nothing predicts
    special: bool
    top: tuple[Token, ...] = ()  # the `top_n_tokens` most likely tokens at this place, best first


@dataclass(slots=True)
class GenerationResult:
    """`text` is TGI's `generated_text`: special tokens left out, a matched stop sequence
    kept. `completion_text` is the OpenAI form, cut before the stop sequence."""

    text: str
    tokens: list[Token]
    finish_reason: FinishReason
    input_tokens: int
    seed: int | None = None
    stop_sequence: str | None = None
    prefill: list[Token] = field(default_factory=list)  # the prompt's tokens, when decoder_input_details

    @property
    def output_tokens(self) -> int:
        return len(self.tokens)

    @property
    def openai_finish_reason(self) -> Literal["stop", "length"]:
        return "length" if self.finish_reason == "length" else "stop"

    @property
    def completion_text(self) -> str:
        if self.stop_sequence is None:
            return self.text
        return self.text[: self.text.find(self.stop_sequence)]


@dataclass(slots=True)
class StopTrimmer:
    """Turns TGI token deltas into OpenAI-style text deltas: text that might be the start of
    a stop sequence is held back until it is known not to be one, and a stop sequence is
    never sent."""

    stop: tuple[str, ...]
    text: str = ""
    sent: int = 0
    done: bool = False

    def feed(self, delta: str) -> str:
        if self.done:
            return ""
        self.text += delta
        cut = min((i for i in (self.text.find(s) for s in self.stop) if i >= 0), default=-1)
        if cut >= 0:
            self.done = True
            return self._send(cut)
        held = max((k for s in self.stop for k in range(min(len(s) - 1, len(self.text)), 0, -1)
                    if self.text.endswith(s[:k])), default=0)
        return self._send(len(self.text) - held)

    def flush(self) -> str:
        """The held-back tail once generation ended without a stop sequence."""
        return "" if self.done else self._send(len(self.text))

    def _send(self, end: int) -> str:
        out = self.text[self.sent:end] if end > self.sent else ""
        self.sent = max(self.sent, end)
        return out
