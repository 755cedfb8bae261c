"""MistralClient against the mock server over HTTP, through both transports."""

from __future__ import annotations

import time

import pytest

from llm_clients.base import GenerationKwargs, LLMError
from llm_clients.limits import TransientError
from llm_clients.mistral import MistralClient

from .helpers import MODEL, USER, backend, closed_port_url, policy

NO_KWARGS = GenerationKwargs()


def make_client(base_url: str, transport: str, **policy_args) -> MistralClient:
    return MistralClient("test", backend("mistral", base_url), policy(**policy_args), transport=transport)


@pytest.fixture(params=["aiohttp", "sdk"])
async def client(request, mock):
    client = make_client(mock.url, request.param)
    yield client
    await client.aclose()


def test_transport_defaults():
    assert MistralClient("test", backend("mistral", None), policy()).transport == "sdk"
    assert MistralClient("test", backend("mistral", "http://127.0.0.1:1"), policy()).transport == "aiohttp"


async def test_answer_and_usage(client, mock):
    (completion,) = await client.chat(USER, NO_KWARGS)
    assert completion.text == "Echo: hello there"
    assert completion.model == MODEL
    assert completion.usage.as_dict() == {"input_tokens": 2, "output_tokens": 3, "cost_usd": 0.0, "cached_calls": 0}
    assert completion.finish_reason == "stop"
    (logged,) = mock.requests()
    assert logged["route"] == "/v1/chat/completions"
    assert logged["body"]["messages"] == USER and logged["body"]["model"] == MODEL
    assert logged["authorization"] == "Bearer unused"


async def test_generation_kwargs_mapping(client, mock):
    kwargs = GenerationKwargs(max_new_tokens=2, temperature=0.3, top_p=0.9, stop=["\n\n"], seed=7,
                              frequency_penalty=0.1, presence_penalty=0.2, top_k=40, repetition_penalty=1.1)
    (completion,) = await client.chat(USER, kwargs)
    assert completion.text == "Echo: hello" and completion.finish_reason == "length"
    body = mock.requests()[0]["body"]
    expected = {"max_tokens": 2, "temperature": 0.3, "top_p": 0.9, "stop": ["\n\n"], "random_seed": 7,
                "frequency_penalty": 0.1, "presence_penalty": 0.2, "top_k": 40, "repetition_penalty": 1.1}
    assert {k: body.get(k) for k in expected} == expected
    assert "seed" not in body and "max_new_tokens" not in body


async def test_greedy_and_model_override(client, mock):
    await client.chat(USER, GenerationKwargs(do_sample=False), model="mistral-small")
    body = mock.requests()[0]["body"]
    assert body["model"] == "mistral-small" and body["temperature"] == 0.0


async def test_native_n_is_one_call(client, mock):
    mock.script([{"reply": ["one", "two words"]}])
    completions = await client.chat(USER, NO_KWARGS, n=2)
    assert [c.text for c in completions] == ["one", "two words"]
    assert mock.stats()["requests"] == 1 and mock.requests()[0]["body"]["n"] == 2
    assert completions[0].usage.as_dict() == {"input_tokens": 2, "output_tokens": 3, "cost_usd": 0.0, "cached_calls": 0}
    assert completions[1].usage.as_dict() == {"input_tokens": 0, "output_tokens": 0, "cost_usd": 0.0, "cached_calls": 0}


async def test_stream_deltas_make_the_text(client, mock):
    deltas: list[str] = []
    completion = await client.stream_chat(USER, NO_KWARGS, on_delta=deltas.append)
    assert len(deltas) == 3
    assert "".join(deltas) == completion.text == "Echo: hello there"
    assert completion.usage.as_dict() == {"input_tokens": 2, "output_tokens": 3, "cost_usd": 0.0, "cached_calls": 0}
    assert completion.finish_reason == "stop"
    assert mock.requests()[0]["body"]["stream"] is True


async def test_transient_500_is_retried(client, mock):
    mock.script([{"status": 500, "times": 1}])
    (completion,) = await client.chat(USER, NO_KWARGS)
    assert completion.text == "Echo: hello there"
    assert mock.stats()["requests"] == 2


async def test_429_retry_after_is_honoured(client, mock):
    mock.script([{"status": 429, "retry_after": 0.3, "times": 1}])
    started = time.monotonic()
    await client.chat(USER, NO_KWARGS)
    assert time.monotonic() - started >= 0.29  # the policy's own backoff is at most 1 ms here
    assert mock.stats()["requests"] == 2


async def test_400_is_not_retried(client, mock):
    mock.script([{"status": 400}])
    with pytest.raises(LLMError, match="400") as info:
        await client.chat(USER, NO_KWARGS)
    assert not isinstance(info.value, TransientError)
    assert mock.stats()["requests"] == 1


async def test_retries_exhausted(client, mock):
    mock.script([{"status": 502}])
    with pytest.raises(LLMError, match="3 attempts"):
        await client.chat(USER, NO_KWARGS)
    assert mock.stats()["requests"] == 3


async def test_stream_error_before_first_delta_is_retried(client, mock):
    mock.script([{"status": 503, "times": 1}])
    completion = await client.stream_chat(USER, NO_KWARGS, on_delta=lambda d: None)
    assert completion.text == "Echo: hello there"
    assert mock.stats()["requests"] == 2


@pytest.mark.parametrize("transport", ["aiohttp", "sdk"])
async def test_timeout_is_retried_then_fails(mock, transport):
    mock.script([{"latency_ms": 5000}])
    client = make_client(mock.url, transport, max_retries=1, timeout_s=0.2)
    with pytest.raises(LLMError, match="timed out"):
        await client.chat(USER, NO_KWARGS)
    assert mock.stats()["requests"] == 2
    await client.aclose()


@pytest.mark.parametrize("transport", ["aiohttp", "sdk"])
async def test_connection_refused(transport):
    client = make_client(closed_port_url(), transport, max_retries=1)
    with pytest.raises(LLMError, match="2 attempts") as info:
        await client.chat(USER, NO_KWARGS)
    assert isinstance(info.value.__cause__, TransientError)
    await client.aclose()
