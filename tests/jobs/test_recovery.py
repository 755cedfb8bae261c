"""Durability with Redis: a worker killed with SIGKILL mid-job, a worker stopped with
SIGTERM, and an API server restarted mid-job; every row ends up in the results once."""

from __future__ import annotations

import time

from app.jobs import keys
from tests.service import serve

from .conftest import jobs_settings, read_events, results, text_rows, wait_job


def assert_exactly_once(rows: list[dict], n: int, prefix: str = "row") -> None:
    assert [r["index"] for r in rows] == list(range(n))
    for r in rows:
        assert r["generation"] == f"Echo: {prefix} {r['index']}", r
        assert r["error"] is None


def assert_queue_drained(rds) -> None:
    assert rds.xlen(keys.QUEUE) == 0
    assert rds.xpending(keys.QUEUE, keys.GROUP)["pending"] == 0


async def test_worker_killed_mid_job(mock, rds, redis_server, workers):
    n = 200
    settings = jobs_settings(mock.url, redis_server.url, max_concurrency=8, claim_idle_ms=1000)
    first = workers(settings)
    mock.configure(latency_ms=100)
    async with serve(settings) as client:
        job = (await client.post("/jobs", json={"task": "text-generation", "rows": text_rows(n)})).json()
        await wait_job(client, job["id"], until=lambda j: j["progress"]["completed"] >= 40)
        first.kill()
        killed_at = (await client.get(f"/jobs/{job['id']}")).json()["progress"]["completed"]
        assert killed_at < n
        workers(settings)
        done = await wait_job(client, job["id"], timeout=60)
        assert done["progress"] == {"total": n, "completed": n, "failed": 0}
        rows = await results(client, job["id"])
        assert_exactly_once(rows, n)
        for kind in ("input_tokens", "output_tokens"):  # the usage of the stored rows, each once
            assert done["usage"][kind] == sum(r["metadata"]["usage"][kind] for r in rows)
        events = await read_events(client, job["id"])
        assert sorted(e["data"]["index"] for e in events if e["event"] == "row") == list(range(n))
        # the killed worker's calls in flight were repeated; nothing else was
        assert (await mock.astats())["requests"] <= n + 2 * 8
    assert_queue_drained(rds)


async def test_sigterm_hands_chunks_over_at_once(mock, rds, redis_server, workers):
    n = 120
    # a long claim_idle_ms: only an explicit release lets the second worker go on quickly
    settings = jobs_settings(mock.url, redis_server.url, max_concurrency=4, claim_idle_ms=30_000,
                             shutdown_grace_s=0)
    first = workers(settings)
    mock.configure(latency_ms=100)
    async with serve(settings) as client:
        job = (await client.post("/jobs", json={"task": "text-generation", "rows": text_rows(n)})).json()
        await wait_job(client, job["id"], until=lambda j: j["progress"]["completed"] >= 12)
        assert first.terminate() == 0
        assert "released" in first.log.read_text()
        workers(settings)
        started = time.monotonic()
        await wait_job(client, job["id"], timeout=60)
        assert time.monotonic() - started < 20  # not the 30 s claim_idle_ms
        assert_exactly_once(await results(client, job["id"]), n)
    assert_queue_drained(rds)


async def test_api_server_restart_mid_job(mock, rds, redis_server, workers):
    n = 60
    settings = jobs_settings(mock.url, redis_server.url, max_concurrency=4)
    workers(settings)
    mock.configure(latency_ms=50)
    async with serve(settings) as client:
        job = (await client.post("/jobs", json={"task": "text-generation", "rows": text_rows(n)})).json()
        await wait_job(client, job["id"], until=lambda j: j["progress"]["completed"] >= 4)
    async with serve(settings) as client:  # a new server process would see the same
        again = (await client.get(f"/jobs/{job['id']}")).json()
        assert again["id"] == job["id"] and again["status"] in ("running", "completed")
        await wait_job(client, job["id"])
        assert_exactly_once(await results(client, job["id"]), n)
        assert [j["id"] for j in (await client.get("/jobs")).json()["jobs"]] == [job["id"]]
