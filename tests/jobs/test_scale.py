"""Many rows, and several workers on one job."""

from __future__ import annotations

from tests.service import serve

from .conftest import jobs_settings, read_events, results, text_rows, wait_job


async def test_ten_thousand_rows(mock, rds, redis_server, workers):
    n = 10_000
    settings = jobs_settings(mock.url, redis_server.url, max_concurrency=64, max_row_attempts=3)
    workers(settings)
    async with serve(settings) as client:
        r = await client.post("/jobs", json={"task": "text-generation", "rows": text_rows(n), "include_raw": False})
        assert r.status_code == 202
        job = r.json()
        done = await wait_job(client, job["id"], timeout=180)
        assert done["progress"] == {"total": n, "completed": n, "failed": 0}
        rows = await results(client, job["id"])
        assert [row["index"] for row in rows] == list(range(n))
        assert all(row["generation"] == f"Echo: row {row['index']}" for row in rows[::97])
        assert "raw_input" not in rows[0]["metadata"]
        events = await read_events(client, job["id"], timeout=120)
        assert sum(e["event"] == "row" for e in events) == n
    assert (await mock.astats())["requests"] == n


async def test_two_workers_share_a_job(mock, rds, redis_server, workers):
    n = 48
    settings = jobs_settings(mock.url, redis_server.url, max_concurrency=2, chunk_units=2)
    workers(settings)
    workers(settings)
    mock.configure(latency_ms=100)
    async with serve(settings) as client:
        job = (await client.post("/jobs", json={"task": "text-generation", "rows": text_rows(n)})).json()
        await wait_job(client, job["id"], timeout=60)
        rows = await results(client, job["id"])
        assert [row["index"] for row in rows] == list(range(n))
    stats = await mock.astats()
    assert stats["requests"] == n
    assert stats["max_in_flight"] > 2  # more than one worker's limit: both were calling
