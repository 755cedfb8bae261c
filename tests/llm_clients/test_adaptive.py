"""Adaptive concurrency and rate-limit headers: the resizable slots, the controller's rules,
and a client against the mock server enforcing its own ceiling."""

from __future__ import annotations

import asyncio
import time

import httpx

from llm_clients.adaptive import AdaptiveLimit, Slots
from llm_clients.base import GenerationKwargs
from llm_clients.limits import CallPolicy, LLMError, parse_duration, quota_reset, transient_status_error
from llm_clients.openai import OpenAIClient

from .helpers import USER, backend


async def test_slots_shrink_and_grow_while_calls_wait():
    slots = Slots(2)
    await slots.acquire()
    await slots.acquire()
    waiter = asyncio.create_task(slots.acquire())
    await asyncio.sleep(0)
    assert slots.waiting == 1 and not waiter.done()
    slots.resize(1)
    slots.release()  # 1 in use, limit 1: the waiter still waits
    await asyncio.sleep(0)
    assert not waiter.done()
    slots.resize(2)
    await asyncio.sleep(0)
    assert waiter.done() and slots.in_use == 2 and slots.waiting == 0


async def test_a_cancelled_waiter_gives_up_its_place():
    slots = Slots(1)
    await slots.acquire()
    waiter = asyncio.create_task(slots.acquire())
    await asyncio.sleep(0)
    waiter.cancel()
    await asyncio.gather(waiter, return_exceptions=True)
    assert slots.waiting == 0
    slots.release()
    await slots.acquire()  # the slot went to nobody else
    assert slots.in_use == 1


def test_one_burst_of_429s_halves_once_and_successes_bring_it_back():
    slots = Slots(32)
    limit = AdaptiveLimit(slots, 32)
    started = time.monotonic()
    limit.on_overload(started, 32)
    for _ in range(10):  # the same burst: calls that got their slot before the decrease
        limit.on_overload(started, 32)
    assert slots.limit == 16 and limit.safe == 31
    limit.on_overload(time.monotonic(), 12)  # a call sent after it: a new overload, at 12 in flight
    assert slots.limit == 8 and limit.safe == 11
    for _ in range(3):  # below the level the backend took: +1 per success
        limit.on_success()
    assert slots.limit == 11
    calls = 0
    while slots.limit < 12:  # at that level: probed slowly
        limit.on_success()
        calls += 1
    assert calls == 32 * 11
    for _ in range(100_000):
        limit.on_success()
    assert slots.limit == 32  # never above max_concurrency


def test_a_burst_learns_the_level_from_its_last_refusal():
    """128 in flight against a ceiling of 32: the 96 refusals come back while the accepted
    calls are still running, in flight 128, 127, ... 33. Learning 127 from the first, the
    limit would climb straight back past the ceiling after every halving."""
    slots = Slots(128)
    limit = AdaptiveLimit(slots, 128)
    started = time.monotonic()
    for in_flight in range(128, 32, -1):
        limit.on_overload(started, in_flight)
    assert slots.limit == 64 and limit.safe == 32
    limit.on_overload(time.monotonic(), 40)  # a later burst starts from what it sees
    assert slots.limit == 32 and limit.safe == 39


def test_never_below_one():
    slots = Slots(1)
    limit = AdaptiveLimit(slots, 4)
    limit.on_overload(time.monotonic(), 1)
    assert slots.limit == 1


async def test_a_slot_reports_when_it_was_granted():
    slots = Slots(1)
    first = await slots.acquire()
    waiter = asyncio.create_task(slots.acquire())
    await asyncio.sleep(0)
    slots.release()
    released = time.monotonic()
    await asyncio.sleep(0.01)  # the waiter resumes later than it was granted
    assert first <= released and await waiter <= released


def test_rate_limit_headers():
    assert parse_duration("6m0s") == 360 and parse_duration("20ms") == 0.02 and parse_duration("1.5s") == 1.5
    assert parse_duration("2") == 2 and parse_duration("soon") is None
    spent = {"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "2.5s",
             "x-ratelimit-remaining-tokens": "100", "x-ratelimit-reset-tokens": "9s"}
    assert quota_reset(spent) == 2.5
    assert quota_reset({"x-ratelimit-remaining-requests": "4"}) is None
    error = transient_status_error(429, "slow down", httpx.Headers(spent))
    assert error.overload and error.quota_reset == 2.5 and error.retry_after == 2.5
    error = transient_status_error(429, "slow down", httpx.Headers({**spent, "Retry-After": "7"}))
    assert error.retry_after == 7 and error.quota_reset == 2.5
    assert transient_status_error(503, "down", httpx.Headers(spent)).quota_reset is None


def adaptive_client(mock, max_concurrency: int, **policy_kw) -> OpenAIClient:
    policy = CallPolicy(max_concurrency, adaptive=True, backoff_base_s=0.001, **policy_kw)
    return OpenAIClient("mock", backend("openai", mock.openai_url, max_concurrency=max_concurrency), policy)


async def test_adaptive_limit_settles_under_the_servers_ceiling(mock):
    mock.configure(latency_ms=20, max_in_flight=4, retry_after_s=0)
    client = adaptive_client(mock, 16, max_retries=20)
    try:
        answers = await asyncio.gather(*(client.chat(USER, GenerationKwargs()) for _ in range(80)))
    finally:
        await client.aclose()
    assert len(answers) == 80 and all(a[0].text == "Echo: hello there" for a in answers)
    stats = mock.stats()
    assert stats["rate_limited"] > 0 and stats["max_in_flight"] <= 4
    assert client.policy.throttled == stats["rate_limited"]
    assert client.policy.limit < 16
    assert stats["requests"] == 80 + stats["rate_limited"]


async def test_a_spent_quota_pauses_every_call_of_the_backend(mock):
    mock.configure(rpm=2)
    client = adaptive_client(mock, 4, max_retries=0, backoff_max_s=30)
    try:
        await client.chat(USER, GenerationKwargs())
        await client.chat(USER, GenerationKwargs())
        try:
            await client.chat(USER, GenerationKwargs())
            raise AssertionError("the third call in a minute must be refused")
        except LLMError as exc:
            assert "429" in str(exc)
    finally:
        await client.aclose()
    # the mock said no request is left until its window moves on (about 60 s): capped at backoff_max_s
    assert client.policy.paused_until - time.monotonic() > 20
    headers = mock.requests()  # the refused call never reached a handler
    assert len(headers) == 2 and mock.stats()["rate_limited"] == 1


async def test_mock_limit_headers(mock):
    mock.configure(tpm=10)
    async with httpx.AsyncClient(base_url=mock.url) as http:
        body = {"model": "m", "messages": [{"role": "user", "content": "one two three"}], "max_tokens": 5}
        ok = await http.post("/v1/chat/completions", json=body)
        refused = await http.post("/v1/chat/completions", json=body)  # 8 + 8 > 10
    assert ok.status_code == 200 and refused.status_code == 429
    assert refused.headers["x-ratelimit-limit-tokens"] == "10"
    assert refused.headers["x-ratelimit-remaining-tokens"] == "2"
    assert parse_duration(refused.headers["x-ratelimit-reset-tokens"]) > 0
    assert int(refused.headers["Retry-After"]) >= 1
