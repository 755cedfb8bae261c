"""OpenAIClient against the mock server over HTTP, through both transports."""

from __future__ import annotations

import asyncio
import time

import pytest

from llm_clients.base import GenerationKwargs, LLMError
from llm_clients.limits import TransientError
from llm_clients.openai import OpenAIClient

from .helpers import MODEL, USER, backend, closed_port_url, policy

NO_KWARGS = GenerationKwargs()


def make_client(base_url: str, transport: str, **policy_args) -> OpenAIClient:
    return OpenAIClient("test", backend("openai", base_url), policy(**policy_args), transport=transport)


@pytest.fixture(params=["aiohttp", "sdk"])
async def client(request, mock):
    client = make_client(mock.openai_url, request.param)
    yield client
    await client.aclose()


async def test_answer_and_usage(client, mock):
    (completion,) = await client.chat(USER, NO_KWARGS)
    assert completion.text == "Echo: hello there"
    assert completion.model == MODEL
    assert completion.usage.as_dict() == {"input_tokens": 2, "output_tokens": 3, "cost_usd": 0.0, "cached_calls": 0}
    assert completion.finish_reason == "stop"
    (logged,) = mock.requests()
    assert logged["route"] == "/v1/chat/completions"
    assert logged["body"] == {"model": MODEL, "messages": USER}
    assert logged["authorization"] == "Bearer unused"


async def test_generation_kwargs_mapping(client, mock):
    kwargs = GenerationKwargs(max_new_tokens=2, temperature=0.3, top_p=0.9, stop=["\n\n"], seed=7,
                              frequency_penalty=0.1, presence_penalty=0.2, top_k=40, repetition_penalty=1.1)
    (completion,) = await client.chat(USER, kwargs)
    assert completion.text == "Echo: hello"
    assert completion.finish_reason == "length"
    body = mock.requests()[0]["body"]
    assert body == {"model": MODEL, "messages": USER, "max_tokens": 2, "temperature": 0.3, "top_p": 0.9,
                    "stop": ["\n\n"], "seed": 7, "frequency_penalty": 0.1, "presence_penalty": 0.2,
                    "top_k": 40, "repetition_penalty": 1.1}


async def test_model_override_and_greedy(client, mock):
    await client.chat(USER, GenerationKwargs(do_sample=False), model="other-model")
    body = mock.requests()[0]["body"]
    assert body["model"] == "other-model" and body["temperature"] == 0.0 and "do_sample" not in body


def test_official_api_defaults():
    assert OpenAIClient("test", backend("openai", "http://127.0.0.1:1/v1"), policy()).transport == "aiohttp"
    client = OpenAIClient("test", backend("openai", None), policy())
    assert client.transport == "sdk" and not client.send_extras
    payload = client.payload(USER, GenerationKwargs(top_k=5, repetition_penalty=1.2, temperature=1.0), "gpt")
    assert payload == {"model": "gpt", "messages": USER, "temperature": 1.0}


async def test_api_key_from_env(mock, monkeypatch):
    monkeypatch.setenv("SYNTHSERVE_TEST_KEY", "sk-test")
    config = backend("openai", mock.openai_url, api_key_env="SYNTHSERVE_TEST_KEY")
    for transport in ("aiohttp", "sdk"):
        client = OpenAIClient("test", config, policy(), transport=transport)
        await client.chat(USER, NO_KWARGS)
        await client.aclose()
    assert [r["authorization"] for r in mock.requests()] == ["Bearer sk-test"] * 2


async def test_native_n_is_one_call(client, mock):
    mock.script([{"reply": ["first", "second answer", "third one here"]}])
    completions = await client.chat(USER, NO_KWARGS, n=3)
    assert [c.text for c in completions] == ["first", "second answer", "third one here"]
    assert OpenAIClient.native_n
    assert mock.stats()["requests"] == 1
    assert mock.requests()[0]["body"]["n"] == 3
    # the call's usage is counted once: on the first completion
    assert completions[0].usage.as_dict() == {"input_tokens": 2, "output_tokens": 6, "cost_usd": 0.0, "cached_calls": 0}
    assert all(c.usage.as_dict() == {"input_tokens": 0, "output_tokens": 0, "cost_usd": 0.0, "cached_calls": 0} for c in completions[1:])


async def test_stream_deltas_make_the_text(client, mock):
    deltas: list[str] = []
    completion = await client.stream_chat(USER, GenerationKwargs(max_new_tokens=50), on_delta=deltas.append)
    assert len(deltas) == 3
    assert "".join(deltas) == completion.text == "Echo: hello there"
    assert completion.usage.as_dict() == {"input_tokens": 2, "output_tokens": 3, "cost_usd": 0.0, "cached_calls": 0}
    assert completion.finish_reason == "stop" and completion.model == MODEL
    body = mock.requests()[0]["body"]
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert body["max_tokens"] == 50


async def test_stream_retried_before_first_delta(client, mock):
    mock.script([{"status": 503, "times": 1}])
    deltas: list[str] = []
    completion = await client.stream_chat(USER, NO_KWARGS, on_delta=deltas.append)
    assert "".join(deltas) == completion.text == "Echo: hello there"
    assert mock.stats()["requests"] == 2


async def test_transient_500_is_retried(client, mock):
    mock.script([{"status": 500, "times": 1}])
    (completion,) = await client.chat(USER, NO_KWARGS)
    assert completion.text == "Echo: hello there"
    assert mock.stats()["requests"] == 2
    assert client.policy.retries == 1


async def test_429_retry_after_is_honoured(client, mock):
    mock.script([{"status": 429, "retry_after": 0.3, "times": 1}])
    started = time.monotonic()
    (completion,) = await client.chat(USER, NO_KWARGS)
    # the policy's own backoff here is at most 1 ms: only Retry-After explains the wait
    assert time.monotonic() - started >= 0.29
    assert completion.text == "Echo: hello there"
    assert mock.stats()["requests"] == 2


async def test_400_is_not_retried(client, mock):
    mock.script([{"status": 400}])
    with pytest.raises(LLMError) as info:
        await client.chat(USER, NO_KWARGS)
    assert not isinstance(info.value, TransientError)
    assert "400" in str(info.value)
    assert mock.stats()["requests"] == 1


async def test_retries_exhausted(client, mock):
    mock.script([{"status": 503}])
    with pytest.raises(LLMError) as info:
        await client.chat(USER, NO_KWARGS)
    assert not isinstance(info.value, TransientError)
    assert "503" in str(info.value) and "3 attempts" in str(info.value)
    assert mock.stats()["requests"] == 3


@pytest.mark.parametrize("transport", ["aiohttp", "sdk"])
async def test_timeout_is_retried_then_fails(mock, transport):
    mock.script([{"latency_ms": 5000}])
    client = make_client(mock.openai_url, transport, max_retries=1, timeout_s=0.2)
    with pytest.raises(LLMError, match="timed out") as info:
        await client.chat(USER, NO_KWARGS)
    assert isinstance(info.value.__cause__, TransientError)
    assert mock.stats()["requests"] == 2
    await client.aclose()


@pytest.mark.parametrize("transport", ["aiohttp", "sdk"])
async def test_connection_refused(transport):
    client = make_client(closed_port_url() + "/v1", transport, max_retries=2)
    with pytest.raises(LLMError, match="3 attempts") as info:
        await client.chat(USER, NO_KWARGS)
    assert isinstance(info.value.__cause__, TransientError)
    assert client.policy.retries == 2
    await client.aclose()


async def test_concurrent_calls_share_one_pool(client, mock):
    # the first 8 are held long enough to overlap even on a busy machine; the rest answer at once
    mock.script([{"latency_ms": 500, "times": 8}])
    results = await asyncio.gather(*(client.chat([{"role": "user", "content": f"q{i}"}], NO_KWARGS)
                                     for i in range(20)))
    assert [r[0].text for r in results] == [f"Echo: q{i}" for i in range(20)]
    assert mock.stats()["max_in_flight"] == 8
