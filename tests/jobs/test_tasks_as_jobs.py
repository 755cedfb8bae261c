"""Tasks of every shape run as jobs: whole-request generators (evol-*-generator override
Task.stream), generators with a varying number of rows per unit, and multi-call tasks
whose step answers are checkpointed so that a row retried after a crash replays them."""

from __future__ import annotations

import json

import pytest

from tests.service import serve

from .conftest import jobs_settings, read_events, results, wait_for, wait_job


@pytest.fixture(params=["redis", "private"])
def settings(request, mock, rds, redis_server, workers, data_dir):
    if request.param == "redis":
        s = jobs_settings(mock.url, redis_server.url, max_concurrency=4, chunk_units=3)
        workers(s)
        return s
    return jobs_settings(mock.url, None, max_concurrency=4, chunk_units=3, data_dir=data_dir)


async def test_whole_request_generator(mock, settings):
    await mock.ascript([{"reply": "#Rewritten Prompt#: Name three rivers of Europe."}])
    n = 7
    async with serve(settings) as client:
        r = await client.post("/jobs", json={"task": "evol-instruct-generator",
                                             "params": {"num_instructions": n, "min_length": 5}})
        assert r.status_code == 202, r.text
        assert r.json()["progress"]["total"] == n
        done = await wait_job(client, r.json()["id"])
        assert done["progress"] == {"total": n, "completed": n, "failed": 0}
        rows = await results(client, done["id"])
        assert [row["index"] for row in rows] == list(range(n))
        assert all(row["instruction"] == "Name three rivers of Europe." for row in rows)


async def test_generator_with_varying_rows_per_unit(mock, settings):
    await mock.ascript([{"reply": json.dumps(["task one", "task two", "task three"])}])
    async with serve(settings) as client:
        r = await client.post("/jobs", json={"task": "embedding-task-generator", "params": {
            "category": "text-retrieval", "flatten_tasks": True, "num_generations": 4}})
        assert r.status_code == 202, r.text
        done = await wait_job(client, r.json()["id"])
        assert done["progress"] == {"total": 12, "completed": 12, "failed": 0}
        rows = await results(client, done["id"])
        assert [row["index"] for row in rows] == list(range(12))
        assert sorted(row["task"] for row in rows) == sorted(["task one", "task two", "task three"] * 4)
        events = await read_events(client, done["id"])
        assert sorted(e["data"]["index"] for e in events if e["event"] == "row") == list(range(12))


def user_texts(requests: list[dict]) -> list[str]:
    return [m["content"] for r in requests for m in r["body"]["messages"] if m["role"] == "user"]


async def test_checkpoints_replay_paid_calls_after_kill(mock, rds, redis_server, workers):
    """evol-instruct, 3 rounds per row; the worker dies during round 2; the next one
    replays round 1 from the checkpoints instead of paying for it again."""
    settings = jobs_settings(mock.url, redis_server.url, max_concurrency=8, claim_idle_ms=1000)
    rules = [{"match": "zqx2", "reply": "#Rewritten Prompt#: zqx3 final"},
             {"match": "zqx1", "reply": "#Rewritten Prompt#: zqx2 second"},
             {"match": "seed-", "reply": "#Rewritten Prompt#: zqx1 first"}]
    await mock.ascript([{**rules[1], "latency_ms": 30_000}, rules[0], rules[2]])
    n = 4
    first = workers(settings)
    async with serve(settings) as client:
        r = await client.post("/jobs", json={"task": "evol-instruct", "params": {"num_evolutions": 3},
                                             "rows": [{"instruction": f"seed-{i}"} for i in range(n)]})
        assert r.status_code == 202, r.text
        job_id = r.json()["id"]

        async def round_two_in_flight():
            return sum("zqx1" in t for t in user_texts(await mock.arequests())) >= n
        await wait_for(round_two_in_flight, timeout=30)
        first.kill()
        await mock.ascript(rules)  # the next worker gets quick answers
        workers(settings)
        done = await wait_job(client, job_id, timeout=60)
        assert done["progress"] == {"total": n, "completed": n, "failed": 0}
        rows = await results(client, job_id)
        assert [row["evolved_instruction"] for row in rows] == ["zqx3 final"] * n
        texts = user_texts(await mock.arequests())
        assert sum("seed-" in t for t in texts) == n  # round 1: paid once per row
        assert sum("zqx1" in t for t in texts) == 2 * n  # round 2: lost with the worker, paid again
        assert sum("zqx2" in t for t in texts) == n
    assert rds.keys("*checkpoints") == []  # dropped with each stored row


async def test_several_rows_per_unit(mock, settings):
    n, k = 5, 3
    async with serve(settings) as client:
        r = await client.post("/jobs", json={"task": "text-generation", "params": {"num_generations": k},
                                             "rows": [{"instruction": f"q{i}"} for i in range(n)]})
        assert r.status_code == 202 and r.json()["progress"]["total"] == n * k
        done = await wait_job(client, r.json()["id"])
        assert done["progress"] == {"total": n * k, "completed": n * k, "failed": 0}
        rows = await results(client, done["id"])
        assert [row["index"] for row in rows] == list(range(n * k))
        assert [row["instruction"] for row in rows] == [f"q{i}" for i in range(n) for _ in range(k)]
        # one call per input row (native n): the job's usage counts it once, not once per row
        assert done["usage"]["output_tokens"] == sum(rows[i * k]["metadata"]["usage"]["output_tokens"]
                                                     for i in range(n))
