"""Pipelines as jobs: progress per step, results sorted by id, events, cancel, and a
worker killed mid-pipeline that loses no row and repeats no finished step."""

from __future__ import annotations

from collections import Counter

from tests.jobs.conftest import jobs_settings, read_events, results, wait_job
from tests.service import mock_settings, serve

THREE_STEPS = {"name": "three", "steps": [
    {"name": "a", "task": "text-generation", "output_mappings": {"generation": "first"}},
    {"name": "b", "task": "text-generation", "input_mappings": {"instruction": "first"},
     "output_mappings": {"generation": "second"}},
    {"name": "c", "task": "text-generation", "input_mappings": {"instruction": "second"}},
]}


def rows(n: int) -> list[dict]:
    return [{"instruction": f"row {i}"} for i in range(n)]


async def test_pipeline_job_end_to_end(mock):
    await mock.ascript([{"match": "queries that users could", "reply": "one\ntwo\nthree"},
                        {"match": "Echo: bad", "status": 400}])
    pipeline = {"name": "fan", "steps": [
        {"name": "ideas", "task": "self-instruct", "params": {"num_instructions": 3},
         "output_mappings": {"instructions": "instruction"}, "explode": "instruction"},
        {"name": "answer", "task": "text-generation"},
        {"name": "not_two", "filter": "instruction != 'two'"},
    ]}
    async with serve(mock_settings(mock.url, max_retries=0)) as client:
        r = await client.post("/jobs", json={"pipeline": pipeline, "rows": [{"input": f"topic {i}"} for i in range(12)],
                                             "seed": 7})
        assert r.status_code == 202, r.text
        job = r.json()
        assert job["pipeline"] == "fan" and job["task"] is None and job["seed"] == 7
        assert job["progress"]["total"] == 12 and set(job["progress"]["steps"]) == {"ideas", "answer", "not_two"}
        done = await wait_job(client, job["id"])
        assert done["progress"]["completed"] == 12 and done["progress"]["failed"] == 0
        steps = done["progress"]["steps"]
        assert (steps["ideas"]["rows_in"], steps["ideas"]["rows_out"]) == (12, 36)
        assert (steps["answer"]["rows_in"], steps["not_two"]["filtered"]) == (36, 12)
        assert list(steps) == ["ideas", "answer", "not_two"]
        got = await results(client, job["id"])
        expected = [f"{i}.{j}" for i in range(12) for j in (0, 2)]
        assert [r["id"] for r in got] == expected and [r["index"] for r in got] == list(range(24))
        assert got[1]["instruction"] == "three" and got[1]["generation"] == "Echo: three"
        events = await read_events(client, job["id"])
        assert sorted(e["data"]["row"]["id"] for e in events if e["event"] == "row") == sorted(expected)
        assert events[-1]["event"] == "done" and events[-1]["data"]["progress"]["steps"]["answer"]["rows_out"] == 36
        # a bad definition or rows: 422 before anything is queued or called
        calls = (await mock.astats())["requests"]
        bad = await client.post("/jobs", json={"pipeline": {"steps": [{"name": "x", "task": "nope"}]}, "rows": rows(1)})
        assert bad.status_code == 422 and "nope" in bad.text
        bad = await client.post("/jobs", json={"pipeline": THREE_STEPS, "rows": [{"other": 1}]})
        assert bad.status_code == 422 and "rows[0].instruction" in bad.text
        bad = await client.post("/jobs", json={"pipeline": THREE_STEPS, "task": "text-generation", "rows": rows(1)})
        assert bad.status_code == 422
        assert (await mock.astats())["requests"] == calls


async def test_a_failing_row_fails_alone_in_a_job(mock):
    await mock.ascript([{"match": "Echo: Echo: row 3", "status": 400}])
    async with serve(mock_settings(mock.url, max_retries=0)) as client:
        job = (await client.post("/jobs", json={"pipeline": THREE_STEPS, "rows": rows(6)})).json()
        done = await wait_job(client, job["id"])
        assert done["progress"]["completed"] == 6 and done["progress"]["failed"] == 1
        got = await results(client, job["id"])
    assert [r["id"] for r in got] == [str(i) for i in range(6)]
    assert got[3]["error"]["step"] == "c" and got[3]["second"] == "Echo: Echo: row 3"
    for r in got:
        if r["id"] != "3":
            assert r["error"] is None and r["generation"] == f"Echo: Echo: Echo: row {r['id']}"


async def test_cancel_a_pipeline_job(mock):
    mock.configure(latency_ms=200)
    async with serve(mock_settings(mock.url, max_concurrency=2)) as client:
        job = (await client.post("/jobs", json={"pipeline": THREE_STEPS, "rows": rows(40)})).json()
        await wait_job(client, job["id"], until=lambda j: j["progress"]["steps"]["a"]["rows_out"] >= 2)
        cancelled = (await client.post(f"/jobs/{job['id']}/cancel")).json()
        assert cancelled["status"] == "cancelled"
        calls = (await mock.astats())["requests"]
        assert calls < 3 * 40
        assert all(r["error"] is None for r in await results(client, job["id"]))


async def test_worker_killed_mid_pipeline_repeats_no_finished_step(mock, rds, redis_server, workers):
    n, limit = 60, 8
    settings = jobs_settings(mock.url, redis_server.url, max_concurrency=limit, claim_idle_ms=1000)
    first = workers(settings)
    mock.configure(latency_ms=100)
    async with serve(settings) as client:
        job = (await client.post("/jobs", json={"pipeline": THREE_STEPS, "rows": rows(n)})).json()
        await wait_job(client, job["id"], until=lambda j: j["progress"]["steps"]["b"]["rows_out"] >= 10)
        first.kill()
        at_kill = await client.get(f"/jobs/{job['id']}")
        assert at_kill.json()["progress"]["completed"] < n
        workers(settings)
        done = await wait_job(client, job["id"], timeout=90)
        assert done["progress"]["completed"] == n and done["progress"]["failed"] == 0
        assert {name: s["rows_out"] for name, s in done["progress"]["steps"].items()} == {"a": n, "b": n, "c": n}
        got = await results(client, job["id"])
    assert [r["id"] for r in got] == [str(i) for i in range(n)]  # every row, once, sorted by id
    for r in got:
        assert r["generation"] == f"Echo: Echo: Echo: row {r['id']}" and r["error"] is None
    # every prompt of every step was asked once, except the calls in flight at the kill
    asked = Counter(req["body"]["messages"][-1]["content"] for req in await mock.arequests())
    repeated = sum(c - 1 for c in asked.values())
    assert len(asked) == 3 * n and repeated <= limit
    assert (await mock.astats())["requests"] == 3 * n + repeated


async def test_dedup_across_chunks_and_the_call_cache(mock):
    from app.config import JobsConfig
    from tests.service import fresh_data_dir
    pipeline = {"steps": [{"name": "answer", "task": "text-generation"},
                          {"name": "once", "dedup": {"column": "generation"}}]}
    words = ["red", "blue", "red", "green", "blue", "red", "green", "gold"]
    settings = mock_settings(mock.url, jobs=JobsConfig(data_dir=fresh_data_dir(), chunk_units=2))
    async with serve(settings) as client:
        kept = []
        for _ in range(2):  # the same job twice: the second is answered from the call cache
            job = (await client.post("/jobs", json={"pipeline": pipeline,
                                                    "rows": [{"instruction": w} for w in words]})).json()
            done = await wait_job(client, job["id"])
            assert done["progress"]["completed"] == len(words)
            assert done["progress"]["steps"]["once"]["filtered"] == len(words) - 4
            got = await results(client, job["id"])
            assert sorted(r["generation"] for r in got) == sorted(f"Echo: {w}" for w in set(words))
            kept.append(got)
    assert (await mock.astats())["requests"] == len(words)
    assert all(r["metadata"]["cached_calls"] == 1 for r in kept[1])


async def test_usage_counts_every_call_of_a_tree_and_a_resubmitted_job_pays_nothing(mock):
    pipeline = {"steps": [{"name": "answer", "task": "text-generation"},
                          {"name": "none", "filter": "false"}]}  # every row's call is paid, no row is kept
    async with serve(mock_settings(mock.url)) as client:
        job = (await client.post("/jobs", json={"pipeline": pipeline, "rows": rows(3)})).json()
        done = await wait_job(client, job["id"])
        assert done["progress"]["completed"] == 3 and await results(client, job["id"]) == []
        assert done["usage"]["input_tokens"] == done["progress"]["steps"]["answer"]["usage"]["input_tokens"] == 3 * 2
        again = (await client.post("/jobs", json={"pipeline": pipeline, "rows": rows(3)})).json()
        assert (await wait_job(client, again["id"]))["usage"]["cached_calls"] == 3  # resubmitted: nothing paid twice
    assert (await mock.astats())["requests"] == 3
