"""SIGTERM on a `synthserve worker` mid-job loses no row: it stops claiming, finishes
the chunks it holds within `shutdown_grace_s`, exits 0, and another worker does the rest
at once, every row exactly once, no LLM call repeated. (With `shutdown_grace_s = 0`, the
release of unfinished chunks is tests/jobs/test_recovery.py's.)"""

from __future__ import annotations

import json
import time

from app.jobs import keys
from tests.jobs.conftest import jobs_settings, results, text_rows, wait_job
from tests.service import serve

PREFIX = "confidential-row"


async def test_sigterm_mid_job_finishes_held_chunks_and_loses_no_row(mock, rds, redis_server, workers):
    n = 60
    # claim_idle_ms far above the test's patience: a chunk the first worker kept without
    # finishing or releasing it would stall the job, and the test would time out
    settings = jobs_settings(mock.url, redis_server.url, max_concurrency=4, chunk_units=2,
                             claim_idle_ms=60_000, shutdown_grace_s=15)
    mock.configure(latency_ms=300)
    first = workers(settings)
    async with serve(settings) as client:
        job = (await client.post("/jobs", json={"task": "text-generation",
                                                "rows": text_rows(n, PREFIX)})).json()
        await wait_job(client, job["id"], until=lambda j: j["progress"]["completed"] >= 8)

        started = time.monotonic()
        assert first.terminate(timeout=30) == 0
        assert time.monotonic() - started < 15  # finished what it held, within the grace period
        # it held nothing when it left: every chunk it took is stored and acknowledged
        assert rds.xpending(keys.QUEUE, keys.GROUP)["pending"] == 0
        done_by_first = len(await results(client, job["id"]))
        assert 8 <= done_by_first < n  # it stopped claiming: the rest waits in the queue
        assert (await mock.astats())["requests"] == done_by_first  # nothing cut off mid-call

        workers(settings)
        await wait_job(client, job["id"], timeout=30)
        rows = await results(client, job["id"])
    assert [r["index"] for r in rows] == list(range(n))
    assert all(r["generation"] == f"Echo: {PREFIX} {r['index']}" and r["error"] is None for r in rows)
    assert (await mock.astats())["requests"] == n  # no row generated twice
    assert rds.xlen(keys.QUEUE) == 0

    # the CLI's logs: JSON lines, no row content
    logs = first.log.read_text()
    records = [json.loads(line) for line in logs.splitlines() if line.strip()]
    assert any("finishing" in r["msg"] for r in records)
    assert PREFIX not in logs
    assert "never retrieved" not in logs  # no task of the worker left failing unobserved
