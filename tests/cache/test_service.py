"""The cache, cost, dry runs, back-pressure and their metrics through the HTTP API."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from app.config import Settings
from tests.service import mock_settings, serve

ROWS = [{"instruction": f"name a colour, take {i}"} for i in range(6)]


def settings(mock, *, server: dict | None = None, **backend) -> Settings:
    s = mock_settings(mock.url, max_retries=0)
    s.backends["mock"] = s.backends["mock"].model_copy(update=backend)
    if server:
        s.server = s.server.model_copy(update=server)
    return s


async def post(client: httpx.AsyncClient, **body) -> dict:
    r = await client.post("/tasks/text-generation", json={"rows": ROWS, **body})
    assert r.status_code == 200, r.text
    return r.json()


async def test_a_rerun_makes_no_call_and_costs_nothing(mock):
    async with serve(settings(mock, price_input_per_mtok=1.0, price_output_per_mtok=4.0)) as client:
        first = await post(client)
        second = await post(client)
    assert mock.stats()["requests"] == len(ROWS)
    assert [r["generation"] for r in second["rows"]] == [r["generation"] for r in first["rows"]]
    assert all(r["metadata"]["cached_calls"] == 1 and r["metadata"]["usage"]["cost_usd"] == 0 for r in second["rows"])
    assert all(r["metadata"]["cached_calls"] == 0 and r["metadata"]["usage"]["cost_usd"] > 0 for r in first["rows"])
    usage = first["usage"]
    assert usage["cost_usd"] == pytest.approx((usage["input_tokens"] * 1 + usage["output_tokens"] * 4) / 1e6)
    assert second["usage"]["cached_calls"] == len(ROWS) and second["usage"]["cost_usd"] == 0
    assert second["usage"]["input_tokens"] == usage["input_tokens"]


async def test_cache_false_reaches_the_backend_every_time(mock):
    async with serve(settings(mock)) as client:
        await post(client)
        again = await post(client, cache=False)
        await post(client, cache=False)
    assert mock.stats()["requests"] == 3 * len(ROWS)
    assert again["usage"]["cached_calls"] == 0


async def test_refresh_overwrites(mock):
    mock.script([{"match": "take 0", "reply": ["red", "blue"]}])
    async with serve(settings(mock)) as client:
        assert (await post(client))["rows"][0]["generation"] == "red"
        assert (await post(client, cache="refresh"))["rows"][0]["generation"] == "blue"
        assert (await post(client))["rows"][0]["generation"] == "blue"
    assert mock.stats()["requests"] == 2 * len(ROWS)


async def test_done_event_carries_cost_and_cached_calls(mock):
    async with serve(settings(mock, price_input_per_mtok=1.0)) as client:
        await post(client)
        r = await client.post("/tasks/text-generation", json={"rows": ROWS, "stream": True})
    done = [line for line in r.text.splitlines() if line.startswith("data:")][-1]
    assert '"cached_calls": 6' in done.replace('"cached_calls":6', '"cached_calls": 6')
    assert mock.stats()["requests"] == len(ROWS)


async def test_dry_run_estimates_without_calling(mock):
    async with serve(settings(mock, price_input_per_mtok=2.0, price_output_per_mtok=10.0)) as client:
        r = await client.post("/tasks/text-generation", json={
            "rows": ROWS, "dry_run": True, "llm": {"generation_kwargs": {"max_new_tokens": 50}}})
        generations = await client.post("/tasks/text-generation", json={
            "rows": ROWS[:1], "dry_run": True, "params": {"num_generations": 3}})
    assert r.status_code == 200
    estimate = r.json()
    assert set(estimate) == {"calls", "input_tokens", "max_output_tokens", "cost_usd"}
    assert estimate["calls"] == len(ROWS) and estimate["max_output_tokens"] == 50 * len(ROWS)
    assert estimate["input_tokens"] >= len(ROWS) * 5
    assert estimate["cost_usd"] == pytest.approx((estimate["input_tokens"] * 2 + 50 * len(ROWS) * 10) / 1e6)
    assert generations.json()["max_output_tokens"] == 3 * 256
    assert mock.stats()["requests"] == 0


async def test_a_full_queue_of_waiting_calls_is_answered_429(mock):
    mock.configure(latency_ms=400)
    async with serve(settings(mock, max_concurrency=1, server={"max_queued_calls": 2})) as client:
        busy = asyncio.create_task(client.post("/tasks/text-generation", json={"rows": ROWS}))
        while mock.stats()["in_flight"] == 0:  # one call in flight, five waiting
            await asyncio.sleep(0.02)
        r = await client.post("/tasks/text-generation", json={"rows": ROWS[:1]})
        assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1
        assert "max_queued_calls" in r.json()["detail"]
        assert (await busy).status_code == 200


async def test_metrics(mock):
    mock.configure(latency_ms=50, max_in_flight=1, retry_after_s=0)
    async with serve(settings(mock, max_concurrency=4, adaptive=True, max_retries=10)) as client:
        await post(client)
        await post(client)
        text = (await client.get("/metrics")).text
    assert "synthserve_cache_hits_total 6.0" in text and "synthserve_cache_misses_total 6.0" in text
    assert 'synthserve_llm_concurrency_limit{backend="mock"}' in text
    throttled = next(line for line in text.splitlines() if line.startswith('synthserve_llm_throttled_total{backend="mock"}'))
    assert float(throttled.split()[-1]) == mock.stats()["rate_limited"] > 0


async def test_embeddings_from_the_cache_count_as_cached_calls(mock):
    rows = [{"text": f"a sentence, take {i}"} for i in range(3)]
    async with serve(mock_settings(mock.url, provider="tgi", max_retries=0)) as client:
        # the mock serves /embed as `synthserve sidecar` does, but its /info names a plain TGI router
        client.app.state.synth.backends["mock"].capabilities |= {"embed"}
        answers = [(await client.post("/tasks/generate-embeddings", json={"rows": rows})).json() for _ in range(2)]
    first, second = answers
    assert mock.stats()["by_route"].get("/embed") == len(rows)
    assert [r["embedding"] for r in second["rows"]] == [r["embedding"] for r in first["rows"]]
    assert [r["metadata"]["cached_calls"] for r in first["rows"]] == [0, 0, 0]
    assert [r["metadata"]["cached_calls"] for r in second["rows"]] == [1, 1, 1]
    assert (first["usage"]["cached_calls"], second["usage"]["cached_calls"]) == (0, len(rows))
