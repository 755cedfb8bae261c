"""max_new_tokens omitted: 256 on the local backend and on every sidecar route
(docs/api.md, "Defaults that apply everywhere"), so a small model cannot ramble on to
the end of its context."""

from __future__ import annotations

from sidecar.params import DEFAULT_MAX_NEW_TOKENS, SamplingParams
from sidecar.protocol import GenerateParameters

COUNTING = ", ".join(str(i) for i in range(1, 41)) + ", "  # a raw prompt that greedy decoding goes on with


async def test_a_generation_without_a_limit_stops_at_256(engine):
    result = await engine.generate(COUNTING, SamplingParams(temperature=0))
    assert result.finish_reason == "length"
    assert result.output_tokens == DEFAULT_MAX_NEW_TOKENS == 256


def test_the_generate_route_names_the_same_default():
    # /generate and POST / (TGI's own default is 100); the chat route and the local backend
    # give none and take the engine's, as the test above does
    assert GenerateParameters().max_new_tokens == DEFAULT_MAX_NEW_TOKENS
