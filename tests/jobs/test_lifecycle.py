"""A job from queued to completed: the job object, NDJSON results, server-sent events;
with a configured Redis and a worker process, and with the private Redis of the default
set-up, whose jobs the API process runs itself."""

from __future__ import annotations

import pytest

from tests.ops.conftest import value
from tests.service import serve

from .conftest import get_job, jobs_settings, read_events, results, text_rows, wait_job


async def run_lifecycle(client, mock, n: int = 20) -> None:
    mock.configure(latency_ms=50)
    r = await client.post("/jobs", json={"task": "text-generation", "rows": text_rows(n)})
    assert r.status_code == 202, r.text
    job = r.json()
    assert job["id"].startswith("job_")
    assert job["status"] == "queued"
    assert job["progress"] == {"total": n, "completed": 0, "failed": 0}
    assert job["usage"] == {"input_tokens": 0, "output_tokens": 0, "cost_usd": 0.0, "cached_calls": 0}
    assert job["started_at"] is None and job["finished_at"] is None and job["error"] is None

    running = await wait_job(client, job["id"], statuses=("running", "completed"))
    assert running["started_at"] is not None
    done = await wait_job(client, job["id"])
    assert done["progress"] == {"total": n, "completed": n, "failed": 0}
    assert done["usage"]["output_tokens"] > 0 and done["finished_at"] is not None

    rows = await results(client, job["id"])
    assert [row["index"] for row in rows] == list(range(n))
    for row in rows:
        assert row["generation"] == f"Echo: row {row['index']}"
        assert row["instruction"] == f"row {row['index']}" and row["error"] is None
    assert done["usage"]["output_tokens"] == sum(r["metadata"]["usage"]["output_tokens"] for r in rows)

    events = await read_events(client, job["id"])
    ids = [int(e["id"]) for e in events]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert events[0]["event"] == "progress" and events[-1]["event"] == "done"
    assert events[-1]["data"]["status"] == "completed" and events[-1]["data"]["id"] == job["id"]
    row_events = [e for e in events if e["event"] == "row"]
    assert sorted(e["data"]["index"] for e in row_events) == list(range(n))
    assert all(e["data"]["row"]["generation"] == f"Echo: row {e['data']['index']}" for e in row_events)

    listed = (await client.get("/jobs")).json()["jobs"]
    assert listed[0]["id"] == job["id"]


async def test_lifecycle_redis(mock, rds, redis_server, workers):
    settings = jobs_settings(mock.url, redis_server.url)
    workers(settings)
    async with serve(settings) as client:
        await run_lifecycle(client, mock)


async def test_lifecycle_private_redis(mock, data_dir):
    async with serve(jobs_settings(mock.url, None, data_dir=data_dir)) as client:
        await run_lifecycle(client, mock)
        # the API process ran the job's rows: /metrics counts them
        metrics = (await client.get("/metrics")).text
        assert value(metrics, "synthserve_rows_generated_total", task="text-generation") == 20


@pytest.mark.parametrize("mode", ["redis", "private"])
async def test_newest_first(mock, rds, redis_server, workers, mode, data_dir):
    settings = jobs_settings(mock.url, redis_server.url if mode == "redis" else None, data_dir=data_dir)
    async with serve(settings) as client:
        ids = [(await client.post("/jobs", json={"task": "text-generation", "rows": text_rows(1)})).json()["id"]
               for _ in range(3)]
        assert [j["id"] for j in (await client.get("/jobs")).json()["jobs"]] == ids[::-1]
        assert (await get_job(client, ids[0]))["status"] == "queued" or mode == "private"
