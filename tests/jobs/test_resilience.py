"""Event streams do not hold Redis connections (a thousand watchers on one job leave every
other route working), and a Redis outage is a 503 with Retry-After that heals itself."""

from __future__ import annotations

import asyncio

import httpx

from tests.service import serve

from .conftest import RedisServer, jobs_settings, text_rows, wait_for

WATCHERS = 1000
POOL = 8


async def watch(client: httpx.AsyncClient, job_id: str, opened: list[int]) -> list[str]:
    """The event kinds of one stream, until it ends."""
    kinds: list[str] = []
    async with client.stream("GET", f"/jobs/{job_id}/events") as r:
        assert r.status_code == 200
        async for line in r.aiter_lines():
            if line.startswith("event: "):
                kinds.append(line.removeprefix("event: "))
                if len(kinds) == 1:
                    opened.append(1)
                if kinds[-1] in ("done", "error"):
                    break
    return kinds


async def test_a_thousand_watchers_leave_the_other_routes_working(mock, rds, redis_server):
    # no worker: the job stays queued and every stream stays open
    settings = jobs_settings(mock.url, redis_server.url, pool_size=POOL)
    async with serve(settings) as client:
        job = (await client.post("/jobs", json={"task": "text-generation", "rows": text_rows(3)})).json()
        limits = httpx.Limits(max_connections=WATCHERS + 10, max_keepalive_connections=0)
        async with httpx.AsyncClient(base_url=client.base_url, timeout=120, limits=limits) as many:
            opened: list[int] = []
            watchers = [asyncio.create_task(watch(many, job["id"], opened)) for _ in range(WATCHERS)]
            await wait_for(lambda: len(opened) == WATCHERS, timeout=120)
            # every other route answers while the streams are open...
            assert (await client.get(f"/jobs/{job['id']}")).status_code == 200
            assert (await client.get(f"/jobs/{job['id']}/results")).status_code == 200
            assert (await client.get("/jobs")).status_code == 200
            other = await client.post("/jobs", json={"task": "text-generation", "rows": text_rows(1)})
            assert other.status_code == 202, other.text
            # ...on the pool and one shared reader: the streams hold no connection each
            assert len(rds.client_list()) <= POOL + 1 + 1  # (+ the reader, + this test's client)
            assert (await client.post(f"/jobs/{job['id']}/cancel")).json()["status"] == "cancelled"
            kinds = await asyncio.gather(*watchers)
    assert all(k == ["progress", "done"] for k in kinds), {tuple(k) for k in kinds}


async def test_redis_outage_is_a_503_and_heals(mock, tmp_path):
    server = RedisServer(tmp_path)
    try:
        async with serve(jobs_settings(mock.url, server.url)) as client:
            job = (await client.post("/jobs", json={"task": "text-generation", "rows": text_rows(2)})).json()
            opened: list[int] = []
            stream = asyncio.create_task(watch(client, job["id"], opened))
            await wait_for(lambda: opened, timeout=30)

            server.stop()
            for method, path in (("GET", f"/jobs/{job['id']}"), ("GET", "/jobs"), ("POST", "/jobs")):
                r = await client.request(method, path, json={"task": "text-generation", "rows": text_rows(1)})
                assert r.status_code == 503, r.text
                assert "Redis" in r.json()["detail"] and int(r.headers["Retry-After"]) >= 1
            assert await stream == ["progress", "error"]  # the open stream ends, and says why

            server.start()  # (an empty Redis: the job is gone, the service is back)
            async def back() -> bool:
                return (await client.get("/jobs")).status_code == 200
            await wait_for(back, timeout=30)
            assert (await client.get(f"/jobs/{job['id']}")).status_code == 404
            again = (await client.post("/jobs", json={"task": "text-generation", "rows": text_rows(1)})).json()
            opened.clear()
            stream = asyncio.create_task(watch(client, again["id"], opened))
            await wait_for(lambda: opened, timeout=30)  # new streams follow again
            await client.post(f"/jobs/{again['id']}/cancel")
            assert await stream == ["progress", "done"]
    finally:
        server.close()
