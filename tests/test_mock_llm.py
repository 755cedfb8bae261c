"""The mock LLM server's own contract (tests/mock_llm.py): what every other test relies on."""

from __future__ import annotations

import json
import time

import httpx
import pytest


@pytest.fixture
def http(mock):
    with httpx.Client(base_url=mock.url, timeout=10) as client:
        yield client


def sse_data(text: str) -> list[str]:
    return [line[5:].strip() for line in text.splitlines() if line.startswith("data:")]


def test_chat_echo_usage_and_limits(http):
    body = {"model": "m", "messages": [{"role": "system", "content": "be brief"},
                                       {"role": "user", "content": "one two three. four"}],
            "max_tokens": 4, "stop": ["."]}
    answer = http.post("/v1/chat/completions", json=body).json()
    assert answer["choices"][0]["message"]["content"] == "Echo: one two three"
    assert answer["choices"][0]["finish_reason"] == "stop"
    assert answer["usage"] == {"prompt_tokens": 6, "completion_tokens": 4, "total_tokens": 10}
    body["max_tokens"] = 2
    answer = http.post("/v1/chat/completions", json=body).json()
    assert answer["choices"][0] == {"index": 0, "message": {"role": "assistant", "content": "Echo: one"},
                                    "finish_reason": "length", "logprobs": None}


def test_chat_stream_usage_modes(http):
    body = {"model": "m", "stream": True, "messages": [{"role": "user", "content": "a b"}]}
    openai_style = sse_data(http.post("/v1/chat/completions",
                                      json={**body, "stream_options": {"include_usage": True}}).text)
    assert openai_style[-1] == "[DONE]"
    chunks = [json.loads(d) for d in openai_style[:-1]]
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"]) == "Echo: a b"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 3
    mistral_style = [json.loads(d) for d in sse_data(http.post("/v1/chat/completions", json=body).text)[:-1]]
    assert mistral_style[-1]["choices"][0]["finish_reason"] == "stop"
    assert mistral_style[-1]["usage"]["prompt_tokens"] == 2


def test_tgi_routes(http):
    params = {"max_new_tokens": 2, "details": True, "seed": 3}
    answer = http.post("/generate", json={"inputs": "raw prompt here", "parameters": params}).json()
    assert answer["generated_text"] == "Echo: raw"
    assert answer["details"]["finish_reason"] == "length" and answer["details"]["seed"] == 3
    assert [t["text"] for t in answer["details"]["tokens"]] == ["Echo:", " raw"]
    assert http.post("/", json={"inputs": "x", "parameters": {}}).json() == [{"generated_text": "Echo: x"}]
    for route, extra in (("/generate_stream", {}), ("/", {"stream": True})):
        events = [json.loads(d) for d in sse_data(http.post(route, json={"inputs": "x y", **extra}).text)]
        assert "".join(e["token"]["text"] for e in events) == "Echo: x y"
        assert all(e["generated_text"] is None for e in events[:-1])
        assert events[-1]["generated_text"] == "Echo: x y"
        assert events[-1]["details"]["finish_reason"] == "eos_token"
    templated = http.post("/chat_tokenize", json={"messages": [{"role": "user", "content": "hi"}]}).json()
    assert templated["templated_text"] == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    vectors = http.post("/embed", json={"inputs": ["a", "b", "a"]}).json()
    assert len(vectors) == 3 and len(vectors[0]) == 16 and vectors[0] == vectors[2] != vectors[1]
    assert http.get("/info").json()["model_id"] == "mock-model"
    assert http.get("/health").status_code == 200


def test_rules_times_replies_and_errors(http, mock):
    mock.script([
        {"match": "boom", "status": 429, "retry_after": 2, "times": 1},
        {"match": "boom", "reply": ["first", "second"]},
        {"route": "/generate", "status": 500},
    ])
    chat = {"messages": [{"role": "user", "content": "say boom"}]}
    failed = http.post("/v1/chat/completions", json=chat)
    assert failed.status_code == 429 and failed.headers["Retry-After"] == "2"
    assert failed.json()["error"]["code"] == "429"
    replies = [http.post("/v1/chat/completions", json=chat).json()["choices"][0]["message"]["content"]
               for _ in range(3)]
    assert replies == ["first", "second", "first"]
    assert http.post("/generate", json={"inputs": "other"}).json()["error_type"] == "mock_error"
    assert http.post("/_mock/script", json=[{"mach": "typo"}]).status_code == 400


def test_stats_log_and_config(http, mock):
    http.post("/_mock/config", json={"latency_ms": 1})
    http.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "x"}]},
              headers={"Authorization": "Bearer k"})
    http.post("/generate", json={"inputs": "y"})
    stats = mock.stats()
    assert stats == {"requests": 2, "in_flight": 0, "max_in_flight": 1, "rate_limited": 0,
                     "by_route": {"/v1/chat/completions": 1, "/generate": 1}}
    log = mock.requests()
    assert [(r["route"], r["authorization"]) for r in log] == [("/v1/chat/completions", "Bearer k"),
                                                              ("/generate", None)]
    assert log[1]["body"] == {"inputs": "y"}
    mock.reset()
    assert mock.stats()["requests"] == 0 and mock.requests() == []


def test_a_call_whose_client_leaves_is_cancelled(mock):
    mock.script([{"latency_ms": 10_000}])
    with pytest.raises(httpx.ReadTimeout), httpx.Client(base_url=mock.url, timeout=0.3) as client:
        client.post("/generate", json={"inputs": "slow"})
    deadline = time.monotonic() + 5  # a wait, not a timing assertion
    while mock.stats()["in_flight"] and time.monotonic() < deadline:
        time.sleep(0.02)
    assert mock.stats()["in_flight"] == 0
