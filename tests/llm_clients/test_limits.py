"""CallPolicy: its rules on fake attempts, and its concurrency cap seen from the mock server."""

from __future__ import annotations

import asyncio

import pytest

from llm_clients.base import GenerationKwargs
from llm_clients.limits import CallPolicy, LLMError, TransientError, is_retryable_status, parse_retry_after
from llm_clients.mistral import MistralClient
from llm_clients.openai import OpenAIClient

from .helpers import backend, policy


@pytest.mark.parametrize("value, expected", [
    (None, None), ("", None), ("2", 2.0), ("0.5", 0.5), ("-3", 0.0),
    ("Wed, 21 Oct 2015 07:28:00 GMT", None),
])
def test_parse_retry_after(value, expected):
    assert parse_retry_after(value) == expected


@pytest.mark.parametrize("status, retryable", [
    (408, True), (409, True), (429, True), (500, True), (502, True), (503, True), (504, True),
    (400, False), (401, False), (403, False), (404, False), (413, False), (422, False),
])
def test_retryable_status(status, retryable):
    assert is_retryable_status(status) is retryable


def test_delay_honours_retry_after_within_the_cap():
    p = CallPolicy(1, backoff_base_s=0.5, backoff_max_s=10)
    assert p._delay(0, 3.0) == 3.0
    assert p._delay(0, 60.0) == 10
    assert all(0 <= p._delay(n, None) <= min(10, 0.5 * 2 ** n) for n in range(8) for _ in range(20))


class Script:
    """An attempt that raises the given exceptions in turn, then answers."""

    def __init__(self, *errors: Exception):
        self.errors = list(errors)
        self.calls = 0

    async def __call__(self) -> str:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return "ok"


async def test_transient_errors_are_retried():
    attempt = Script(TransientError("a"), TransientError("b"))
    p = policy(max_retries=2)
    assert await p.run(attempt) == "ok"
    assert attempt.calls == 3 and p.retries == 2 and p.in_flight == 0


async def test_final_errors_are_not_retried_nor_wrapped():
    error = LLMError("bad request")
    attempt = Script(error)
    with pytest.raises(LLMError) as info:
        await policy(max_retries=3).run(attempt)
    assert info.value is error and attempt.calls == 1


async def test_exhausted_retries_raise_llm_error_from_the_last():
    attempt = Script(*(TransientError(f"try {i}") for i in range(3)))
    with pytest.raises(LLMError, match=r"try 2 \(after 3 attempts\)") as info:
        await policy(max_retries=2).run(attempt)
    assert not isinstance(info.value, TransientError)
    assert isinstance(info.value.__cause__, TransientError)


async def test_retry_if_false_stops_retrying():
    attempt = Script(TransientError("mid-stream"))
    with pytest.raises(LLMError, match="after 1 attempt"):
        await policy(max_retries=3).run(attempt, retry_if=lambda: False)
    assert attempt.calls == 1


async def test_timeout_per_attempt():
    calls = 0

    async def hang() -> None:
        nonlocal calls
        calls += 1
        await asyncio.sleep(3600)

    p = policy(max_retries=1, timeout_s=0.05)
    with pytest.raises(LLMError, match="timed out after 0.05s"):
        await p.run(hang)
    assert calls == 2 and p.in_flight == 0


async def test_slot_is_free_during_backoff():
    p = policy(max_concurrency=1, max_retries=1)
    order: list[str] = []
    first_failed = asyncio.Event()

    async def flaky() -> str:
        if not first_failed.is_set():
            first_failed.set()
            order.append("flaky failed")
            raise TransientError("busy", retry_after=0.2)
        order.append("flaky ok")
        return "ok"

    async def other() -> str:
        await first_failed.wait()
        order.append("other ran")
        return "ok"

    await asyncio.gather(p.run(flaky), p.run(other))
    assert order == ["flaky failed", "other ran", "flaky ok"]


# ---- the cap seen from the server: every client shares its backend's one policy ----

def _openai(mock, transport):
    return OpenAIClient("t", backend("openai", mock.openai_url), policy(8), transport=transport)


@pytest.mark.parametrize("make", [
    pytest.param(lambda mock: _openai(mock, "aiohttp"), id="openai-aiohttp"),
    pytest.param(lambda mock: _openai(mock, "sdk"), id="openai-sdk"),
    pytest.param(lambda mock: MistralClient("t", backend("mistral", mock.url), policy(8)), id="mistral-aiohttp"),
    pytest.param(lambda mock: MistralClient("t", backend("mistral", mock.url), policy(8), transport="sdk"),
                 id="mistral-sdk"),
])
async def test_concurrency_cap_at_the_server(mock, make):
    mock.configure(latency_ms=20)
    # The first 8 are held long enough to overlap even on a busy machine, so the limit is
    # surely reached; meanwhile a client that ignored it would send more.
    mock.script([{"latency_ms": 500, "times": 8}])
    client = make(mock)
    messages = [{"role": "user", "content": "hi"}]
    results = await asyncio.gather(*(client.chat(messages, GenerationKwargs()) for _ in range(200)))
    await client.aclose()
    assert len(results) == 200 and all(r[0].text == "Echo: hi" for r in results)
    stats = mock.stats()
    assert stats["requests"] == 200
    assert stats["max_in_flight"] == 8  # never above the limit, and the limit is used
    assert client.policy.in_flight == 0
