"""The cache, budgets and dry runs of jobs, on the one job engine (the API's own worker on
a private Redis)."""

from __future__ import annotations

import asyncio

import pytest

from tests.service import mock_settings, serve

ROWS = [{"instruction": f"name a fruit, take {i}"} for i in range(20)]


def settings(mock, **backend):
    s = mock_settings(mock.url, max_retries=0)
    s.backends["mock"] = s.backends["mock"].model_copy(update=backend)
    return s


async def finished(client, job_id: str) -> dict:
    while True:
        job = (await client.get(f"/jobs/{job_id}")).json()
        if job["status"] not in ("queued", "running"):
            return job
        await asyncio.sleep(0.05)


async def results(client, job_id: str) -> list[dict]:
    import json
    text = (await client.get(f"/jobs/{job_id}/results")).text
    return [json.loads(line) for line in text.splitlines()]


async def submit(client, **body) -> dict:
    r = await client.post("/jobs", json={"task": "text-generation", "rows": ROWS, **body})
    assert r.status_code == 202, r.text
    return await finished(client, r.json()["id"])


async def test_a_resubmitted_job_makes_no_call(mock):
    async with serve(settings(mock)) as client:
        first = await submit(client)
        again = await submit(client)
        rows_first, rows_again = await results(client, first["id"]), await results(client, again["id"])
    assert first["status"] == again["status"] == "completed"
    assert mock.stats()["requests"] == len(ROWS)
    assert [r["generation"] for r in rows_again] == [r["generation"] for r in rows_first]
    assert all(r["metadata"]["cached_calls"] == 1 for r in rows_again)


async def test_identical_rows_of_a_job_get_distinct_samples_and_keep_them(mock):
    mock.script([{"match": "same", "reply": [f"sample {i}" for i in range(40)]}])
    rows = [{"instruction": "the same prompt"}] * 6
    async with serve(settings(mock)) as client:
        first = await client.post("/jobs", json={"task": "text-generation", "rows": rows})
        one = await finished(client, first.json()["id"])
        again = await client.post("/jobs", json={"task": "text-generation", "rows": rows})
        two = await finished(client, again.json()["id"])
        samples_one = sorted(r["generation"] for r in await results(client, one["id"]))
        samples_two = sorted(r["generation"] for r in await results(client, two["id"]))
    assert len(set(samples_one)) == 6  # six calls, six samples
    assert samples_two == samples_one and mock.stats()["requests"] == 6


async def test_cache_false_on_a_job(mock):
    async with serve(settings(mock)) as client:
        await submit(client)
        await submit(client, cache=False)
    assert mock.stats()["requests"] == 2 * len(ROWS)


async def test_dry_run_of_a_job(mock):
    async with serve(settings(mock, price_input_per_mtok=1.0, price_output_per_mtok=2.0)) as client:
        r = await client.post("/jobs", json={"task": "text-generation", "rows": ROWS, "dry_run": True,
                                             "llm": {"generation_kwargs": {"max_new_tokens": 10}}})
        listed = (await client.get("/jobs")).json()["jobs"]
    assert r.status_code == 200 and r.json()["calls"] == len(ROWS) and r.json()["max_output_tokens"] == 200
    assert r.json()["cost_usd"] == pytest.approx((r.json()["input_tokens"] + 400) / 1e6)
    assert listed == [] and mock.stats()["requests"] == 0


async def test_max_cost_usd_stops_new_calls_and_cancels_the_job(mock):
    mock.configure(latency_ms=20)
    # every call costs 1 USD per input word: a few calls reach a budget of 20
    async with serve(settings(mock, max_concurrency=2, price_input_per_mtok=1e6)) as client:
        job = await submit(client, max_cost_usd=20)
    assert job["status"] == "cancelled" and "max_cost_usd" in job["error"]
    assert mock.stats()["requests"] < len(ROWS)


async def test_a_jobs_usage_has_its_cost_and_cached_calls(mock):
    async with serve(settings(mock, price_input_per_mtok=1.0, price_output_per_mtok=2.0)) as client:
        first = await submit(client)
        again = await submit(client)
        rows = await results(client, first["id"])
    usage = first["usage"]
    paid = sum(r["metadata"]["usage"]["cost_usd"] for r in rows)
    assert usage["cost_usd"] == pytest.approx(paid) and paid > 0
    assert usage["cost_usd"] == pytest.approx((usage["input_tokens"] + 2 * usage["output_tokens"]) / 1e6)
    assert usage["cached_calls"] == 0
    assert again["usage"]["cached_calls"] == len(ROWS) and again["usage"]["cost_usd"] == 0
    assert again["usage"]["input_tokens"] == usage["input_tokens"]


async def test_retry_reruns_only_the_failed_rows_in_place(mock):
    mock.script([{"match": "take 3", "status": 500}, {"match": "take 7", "status": 500}])
    async with serve(settings(mock)) as client:
        job = await submit(client)
        assert job["status"] == "completed" and job["progress"]["failed"] == 2
        mock.script([])
        before = mock.stats()["requests"]
        r = await client.post(f"/jobs/{job['id']}/retry")
        assert r.status_code == 200 and r.json()["id"] == job["id"]
        again = await finished(client, job["id"])
        rows = await results(client, job["id"])
    assert again["status"] == "completed" and again["progress"] == {**job["progress"], "completed": 20, "failed": 0}
    assert mock.stats()["requests"] - before == 2  # only the two failed rows were called again
    assert [r["index"] for r in rows] == list(range(20)) and all(r["error"] is None for r in rows)
    assert rows[3]["generation"] == "Echo: name a fruit, take 3"


async def test_retry_with_a_new_budget_goes_on(mock):
    mock.configure(latency_ms=20)
    async with serve(settings(mock, max_concurrency=2, price_input_per_mtok=1e6)) as client:
        job = await submit(client, max_cost_usd=20)
        assert job["status"] == "cancelled"
        paid = mock.stats()["requests"]
        r = await client.post(f"/jobs/{job['id']}/retry", json={"max_cost_usd": 10_000})
        assert r.status_code == 200
        done = await finished(client, job["id"])
        rows = await results(client, job["id"])
    assert done["status"] == "completed" and done["error"] is None
    assert [r["index"] for r in rows] == list(range(20)) and all(r["error"] is None for r in rows)
    # rows stored before the stop are not run again; a call in flight at the stop is cancelled with the
    # job (max_concurrency 2): if the backend had answered it, it is paid again
    assert paid < len(ROWS) and len(ROWS) <= mock.stats()["requests"] <= len(ROWS) + 2


async def test_retry_of_a_running_job_is_refused(mock):
    mock.configure(latency_ms=300)
    async with serve(settings(mock, max_concurrency=1)) as client:
        r = await client.post("/jobs", json={"task": "text-generation", "rows": ROWS})
        refused = await client.post(f"/jobs/{r.json()['id']}/retry")
        await client.post(f"/jobs/{r.json()['id']}/cancel")
    assert refused.status_code == 422 and "still" in refused.json()["detail"]


async def test_retry_with_cache_refresh_samples_an_unparsed_answer_again(mock):
    schema = {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}
    mock.script([{"match": "take 2", "reply": "not json"}, {"match": "take", "reply": '{"name": "fig"}'}])
    async with serve(settings(mock)) as client:
        job = await submit(client, params={"structured_output": {"schema": schema}})
        assert job["status"] == "completed" and job["progress"]["failed"] == 1
        mock.script([{"match": "take", "reply": '{"name": "plum"}'}])
        before = mock.stats()["requests"]
        assert (await client.post(f"/jobs/{job['id']}/retry")).status_code == 200
        served = await finished(client, job["id"])
        plain = mock.stats()["requests"] - before
        r = await client.post(f"/jobs/{job['id']}/retry", json={"cache": "refresh"})
        assert r.status_code == 200
        again = await finished(client, job["id"])
        rows = await results(client, job["id"])
        refused = await client.post(f"/jobs/{job['id']}/retry", json={"cache": False})
    # a plain retry is answered from the cache: the same unreadable answer, no call
    assert served["progress"]["failed"] == 1 and plain == 0
    # with "refresh" only the failed row calls again, and its new answer is read
    assert mock.stats()["requests"] - before == 1
    assert again["status"] == "completed" and again["progress"]["failed"] == 0
    assert rows[2]["generation_parsed"] == {"name": "plum"} and rows[0]["generation_parsed"] == {"name": "fig"}
    assert refused.status_code == 422 and "cache" in refused.text
