"""max_new_tokens omitted: 256 on the local backend and on every sidecar route
(docs/api.md, "Defaults that apply everywhere"), so a small model cannot ramble on to
the end of its context."""

from __future__ import annotations

from sidecar.params import DEFAULT_MAX_NEW_TOKENS, SamplingParams
from sidecar.protocol import ChatRequest, GenerateParameters

LONG = [{"role": "user", "content": "Count from 1 to 2000, separated by commas."}]
COUNTING = ", ".join(str(i) for i in range(1, 41)) + ", "  # a raw prompt that greedy decoding goes on with


async def test_a_generation_without_a_limit_stops_at_256(engine):
    result = await engine.generate(COUNTING, SamplingParams(temperature=0))
    assert result.finish_reason == "length"
    assert result.output_tokens == DEFAULT_MAX_NEW_TOKENS == 256


def test_every_route_leaves_the_default_to_the_engine_or_names_it():
    assert GenerateParameters().max_new_tokens == DEFAULT_MAX_NEW_TOKENS  # /generate, POST /
    assert ChatRequest(messages=LONG).sampling().max_new_tokens is None  # /v1/chat/completions: the engine's
