"""GET /metrics: Prometheus text, one registry per app, and the counters move."""

from __future__ import annotations

import asyncio

from tests.ops.conftest import samples, value
from tests.service import mock_settings, serve

TASK = "/tasks/text-generation"


async def test_metrics_move_after_requests(mock):
    mock.script([
        {"match": "refused", "status": 400},  # not retryable: the row fails at once
        {"match": "flaky", "status": 503, "times": 1},  # one retry, then the default answer
    ])
    async with serve(mock_settings(mock.url, max_retries=2)) as client:
        before = samples((await client.get("/metrics")).text)
        r = await client.post(TASK, json={"rows": [{"instruction": "one two three"},
                                                   {"instruction": "refused please"},
                                                   {"instruction": "flaky one"}]})
        assert r.status_code == 200 and r.json()["failed"] == 1
        r = await client.get("/metrics")
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/plain")
        after = samples(r.text)

    def moved(name, **labels):
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved("synthserve_task_requests_total", task="text-generation", status="200") == 1
    assert moved("synthserve_http_requests_total", method="POST", route="/tasks/{name}", status="200") == 1
    assert moved("synthserve_http_request_duration_seconds_count", method="POST", route="/tasks/{name}") == 1
    assert moved("synthserve_rows_generated_total", task="text-generation") == 3
    assert moved("synthserve_rows_failed_total", task="text-generation") == 1
    assert moved("synthserve_llm_calls_total", backend="mock") == 3
    assert moved("synthserve_llm_call_errors_total", backend="mock") == 1
    assert moved("synthserve_llm_call_duration_seconds_count", backend="mock") == 3
    assert moved("synthserve_llm_retries_total", backend="mock") == 1
    # the mock counts whitespace-split words: "one two three" in, "Echo: one two three" out
    assert moved("synthserve_llm_tokens_total", backend="mock", direction="input") == 3 + 2
    assert moved("synthserve_llm_tokens_total", backend="mock", direction="output") == 4 + 3
    assert value(after, "synthserve_llm_in_flight", backend="mock") == 0
    assert value(after, "synthserve_llm_max_concurrency", backend="mock") == 8
    assert value(after, "synthserve_sse_streams_open") == 0
    assert ("synthserve_jobs_queue_depth", frozenset()) in after


async def test_in_flight_and_open_streams_while_a_stream_runs(mock):
    mock.script([{"match": "slow", "latency_ms": 1500}])
    async with serve(mock_settings(mock.url)) as client:
        async with client.stream("POST", TASK, json={"rows": [{"instruction": "slow"}], "stream": True}) as stream:
            assert stream.status_code == 200
            text = ""
            for _ in range(50):
                text = (await client.get("/metrics")).text
                if value(text, "synthserve_llm_in_flight", backend="mock") == 1:
                    break
                await asyncio.sleep(0.02)
            assert value(text, "synthserve_sse_streams_open") == 1
            assert value(text, "synthserve_llm_in_flight", backend="mock") == 1
            body = (await stream.aread()).decode()
        assert "event: done" in body
        after = (await client.get("/metrics")).text
    assert value(after, "synthserve_sse_streams_open") == 0
    assert value(after, "synthserve_llm_in_flight", backend="mock") == 0
    assert value(after, "synthserve_rows_generated_total", task="text-generation") == 1


async def test_one_registry_per_app(mock):
    async with serve(mock_settings(mock.url)) as first:
        await first.post(TASK, json={"rows": [{"instruction": "hi"}]})
        async with serve(mock_settings(mock.url)) as second:
            a = (await first.get("/metrics")).text
            b = (await second.get("/metrics")).text
    assert value(a, "synthserve_rows_generated_total", task="text-generation") == 1
    assert value(b, "synthserve_rows_generated_total", task="text-generation") == 0
    assert value(b, "synthserve_llm_calls_total", backend="mock") == 0


async def test_unknown_tasks_share_one_label(mock):
    async with serve(mock_settings(mock.url)) as client:
        for name in ("nope-1", "nope-2"):
            assert (await client.post(f"/tasks/{name}", json={"rows": [{"instruction": "x"}]})).status_code == 404
        await client.get("/no/such/path")
        text = (await client.get("/metrics")).text
    assert value(text, "synthserve_task_requests_total", task="unknown", status="404") == 2
    assert value(text, "synthserve_http_requests_total", method="GET", route="unmatched", status="404") == 1
    assert "nope-1" not in text and "/no/such/path" not in text


async def test_queue_depth_counts_waiting_chunks(mock):
    mock.configure(latency_ms=2000)
    async with serve(mock_settings(mock.url)) as client:
        assert value((await client.get("/metrics")).text, "synthserve_jobs_queue_depth") == 0
        rows = [{"instruction": f"q{i}"} for i in range(200)]
        job = (await client.post("/jobs", json={"task": "text-generation", "rows": rows})).json()
        text = (await client.get("/metrics")).text
        await client.post(f"/jobs/{job['id']}/cancel")
    assert value(text, "synthserve_jobs_queue_depth") > 0
