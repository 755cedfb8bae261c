"""GET /jobs/{id}/events: ids increase, and a reconnect with Last-Event-ID gets only what
came after (from any API server: the log lives in Redis)."""

from __future__ import annotations

import pytest

from tests.service import serve

from .conftest import jobs_settings, read_events, text_rows, wait_job


@pytest.fixture(params=["redis", "private"])
def mode_settings(request, mock, rds, redis_server, workers, data_dir):
    if request.param == "redis":
        settings = jobs_settings(mock.url, redis_server.url, max_concurrency=4)
        workers(settings)
        return settings
    return jobs_settings(mock.url, None, max_concurrency=4, data_dir=data_dir)


async def test_resume_from_last_event_id(mock, mode_settings):
    n = 30
    mock.configure(latency_ms=50)
    async with serve(mode_settings) as client:
        job = (await client.post("/jobs", json={"task": "text-generation", "rows": text_rows(n)})).json()
        first = await read_events(client, job["id"], stop_after=8)  # leaves mid-job
        assert len(first) == 8
        last = first[-1]["id"]
        rest = await read_events(client, job["id"], last_event_id=last)
        assert all(int(e["id"]) > int(last) for e in rest)
        everything = await read_events(client, job["id"])
        assert [e["id"] for e in first + rest] == [e["id"] for e in everything]
        ids = [int(e["id"]) for e in everything]
        assert ids == sorted(set(ids))
        assert sorted(e["data"]["index"] for e in everything if e["event"] == "row") == list(range(n))
        assert everything[-1]["event"] == "done"
        # after the end: nothing more, and the stream closes
        assert await read_events(client, job["id"], last_event_id=everything[-1]["id"], timeout=10) == []


async def test_progress_events_carry_the_job(mock, mode_settings):
    n = 40
    mock.configure(latency_ms=100)
    async with serve(mode_settings) as client:
        job = (await client.post("/jobs", json={"task": "text-generation", "rows": text_rows(n)})).json()
        events = await read_events(client, job["id"])
        progress = [e["data"] for e in events if e["event"] == "progress"]
        assert progress[0]["id"] == job["id"] and progress[0]["status"] in ("queued", "running")
        assert any(p["status"] == "running" for p in progress)
        counts = [p["progress"]["completed"] for p in progress]
        assert counts == sorted(counts)
        # ~1 s of work: progress events at most every 0.5 s, plus the queued/running ones
        assert len(progress) <= 2 + 1 + 10
        assert events[-1]["data"]["progress"] == {"total": n, "completed": n, "failed": 0}


async def test_events_of_unknown_job(mock, mode_settings):
    async with serve(mode_settings) as client:
        assert (await client.get("/jobs/job_nope/events")).status_code == 404
        job = (await client.post("/jobs", json={"task": "text-generation", "rows": text_rows(1)})).json()
        r = await client.get(f"/jobs/{job['id']}/events", headers={"Last-Event-ID": "x"})
        assert r.status_code == 422
        await wait_job(client, job["id"])
