"""Cancel (no new LLM calls start, finished rows stay readable) and DELETE."""

from __future__ import annotations

import asyncio

import pytest

from app.jobs import keys
from tests.service import serve

from .conftest import get_job, jobs_settings, read_events, results, text_rows, wait_job


@pytest.fixture(params=["redis", "private"])
def mode(request):
    return request.param


@pytest.fixture
def settings(mode, mock, rds, redis_server, workers, data_dir):
    if mode == "redis":
        s = jobs_settings(mock.url, redis_server.url, max_concurrency=4)
        workers(s)
        return s
    return jobs_settings(mock.url, None, max_concurrency=4, data_dir=data_dir)


async def test_cancel_stops_calls_and_keeps_rows(mock, settings):
    n = 200
    mock.configure(latency_ms=300)
    async with serve(settings) as client:
        job = (await client.post("/jobs", json={"task": "text-generation", "rows": text_rows(n)})).json()
        await wait_job(client, job["id"], until=lambda j: j["progress"]["completed"] >= 4)
        r = await client.post(f"/jobs/{job['id']}/cancel")
        assert r.status_code == 200 and r.json()["status"] == "cancelled"
        await asyncio.sleep(1.0)
        calls = (await mock.astats())["requests"]
        await asyncio.sleep(1.5)
        assert (await mock.astats())["requests"] == calls  # nothing new started
        assert calls < n

        after = await get_job(client, job["id"])
        assert after["status"] == "cancelled" and after["finished_at"] is not None
        rows = await results(client, job["id"])
        assert len(rows) == after["progress"]["completed"] >= 4
        assert [r["index"] for r in rows] == sorted(r["index"] for r in rows)
        events = await read_events(client, job["id"])
        assert events[-1]["event"] == "done" and events[-1]["data"]["status"] == "cancelled"
        # cancelling again changes nothing
        assert (await client.post(f"/jobs/{job['id']}/cancel")).json()["status"] == "cancelled"


async def test_delete(mock, settings, mode, rds):
    mock.configure(latency_ms=20)
    async with serve(settings) as client:
        job = (await client.post("/jobs", json={"task": "text-generation", "rows": text_rows(5)})).json()
        await wait_job(client, job["id"])
        r = await client.delete(f"/jobs/{job['id']}")
        assert r.status_code == 204 and r.content == b""
        for path in ("", "/results", "/events"):
            assert (await client.get(f"/jobs/{job['id']}{path}")).status_code == 404
        assert (await client.post(f"/jobs/{job['id']}/cancel")).status_code == 404
        assert (await client.delete(f"/jobs/{job['id']}")).status_code == 404
        assert (await client.get("/jobs")).json()["jobs"] == []
        if mode == "redis":
            assert rds.keys(keys.job(job["id"]) + "*") == []


async def test_delete_running_job(mock, settings, mode, rds):
    mock.configure(latency_ms=200)
    async with serve(settings) as client:
        job = (await client.post("/jobs", json={"task": "text-generation", "rows": text_rows(100)})).json()
        await wait_job(client, job["id"], until=lambda j: j["progress"]["completed"] >= 2)
        assert (await client.delete(f"/jobs/{job['id']}")).status_code == 204
        await asyncio.sleep(1.0)
        calls = (await mock.astats())["requests"]
        await asyncio.sleep(1.0)
        assert (await mock.astats())["requests"] == calls
        assert (await client.get(f"/jobs/{job['id']}")).status_code == 404
        if mode == "redis":  # late rows of the deleted job are not written back
            assert rds.keys(keys.job(job["id"]) + "*") == []
