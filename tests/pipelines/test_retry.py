"""POST /jobs/{id}/retry for pipeline jobs: the rows that failed run again from the step
they failed at, under the same id; finished steps and finished rows make no call; every
final row is in the results once; completed, failed, usage and the counters per step come
out as if the rows had not failed."""

from __future__ import annotations

from collections import Counter

from app.jobs.pipelines import Tree, unpacked
from app.jobs.retry import plan_retry
from app.pipelines.execute import Item
from llm_clients import Usage
from tests.jobs.conftest import read_events, results, wait_job
from tests.service import mock_settings, serve

THREE_STEPS = {"name": "three", "steps": [
    {"name": "a", "task": "text-generation", "output_mappings": {"generation": "first"}},
    {"name": "b", "task": "text-generation", "input_mappings": {"instruction": "first"},
     "output_mappings": {"generation": "second"}},
    {"name": "c", "task": "text-generation", "input_mappings": {"instruction": "second"}},
]}
USAGE = ("input_tokens", "output_tokens", "cached_calls")


def rows(n: int) -> list[dict]:
    return [{"instruction": f"row {i}"} for i in range(n)]


def prompts(requests: list[dict]) -> list[str]:
    return [r["body"]["messages"][-1]["content"] for r in requests]


def steps_usage(job: dict) -> dict:
    steps = job["progress"]["steps"].values()
    return {k: sum(s["usage"][k] for s in steps) for k in USAGE}


async def test_retry_runs_the_failed_rows_from_the_step_they_failed_at(mock):
    failing = (2, 5, 7)
    await mock.ascript([{"match": f"Echo: row {i}", "status": 500} for i in failing])
    async with serve(mock_settings(mock.url, max_retries=0)) as client:
        job = (await client.post("/jobs", json={"pipeline": THREE_STEPS, "rows": rows(10)})).json()
        first = await wait_job(client, job["id"])
        assert first["progress"]["completed"] == 10 and first["progress"]["failed"] == 3
        steps = first["progress"]["steps"]
        assert [(s["rows_in"], s["rows_out"], s["failed"]) for s in steps.values()] == [(10, 10, 0), (10, 7, 3), (7, 7, 0)]
        assert {k: first["usage"][k] for k in USAGE} == steps_usage(first)
        assert {r["id"] for r in await results(client, job["id"]) if r["error"]} == {"2", "5", "7"}
        last_event = (await read_events(client, job["id"]))[-1]["id"]

        await mock.ascript([])
        before = len(await mock.arequests())
        r = await client.post(f"/jobs/{job['id']}/retry")
        assert r.status_code == 200, r.text
        assert r.json()["id"] == job["id"] and r.json()["status"] == "queued"
        assert r.json()["progress"]["completed"] == 7 and r.json()["progress"]["failed"] == 0
        done = await wait_job(client, job["id"])
        got = await results(client, job["id"])
        events = await read_events(client, job["id"], last_event_id=last_event)
        asked = prompts((await mock.arequests())[before:])

    # the failed rows were asked steps b and c, nothing else was asked
    assert sorted(asked) == sorted([f"Echo: row {i}" for i in failing] + [f"Echo: Echo: row {i}" for i in failing])
    assert done["status"] == "completed" and done["error"] is None
    assert done["progress"]["completed"] == 10 and done["progress"]["failed"] == 0
    steps = done["progress"]["steps"]
    assert [(s["rows_in"], s["rows_out"], s["failed"]) for s in steps.values()] == [(10, 10, 0)] * 3
    assert steps["a"]["usage"] == first["progress"]["steps"]["a"]["usage"]  # step a ran no row again
    assert {k: done["usage"][k] for k in USAGE} == steps_usage(done)
    assert done["usage"]["input_tokens"] > first["usage"]["input_tokens"]
    # every final row once, in id order, each with its own answer
    assert [r["id"] for r in got] == [str(i) for i in range(10)] and [r["index"] for r in got] == list(range(10))
    for r in got:
        assert r["error"] is None and r["generation"] == f"Echo: Echo: Echo: row {r['id']}"
    # the events go on in place: the retried rows, then done
    assert sorted(e["data"]["row"]["id"] for e in events if e["event"] == "row") == ["2", "5", "7"]
    assert events[-1]["event"] == "done" and events[-1]["data"]["progress"]["completed"] == 10
    assert int(events[0]["id"]) > int(last_event)


async def test_a_retried_row_dedups_against_the_rows_kept_before(mock):
    """Rows that failed before a dedup step reach it on the retry: against the same index,
    where a value kept while they were failing drops them, and their own value is theirs."""
    pipeline = {"steps": [{"name": "answer", "task": "text-generation"},
                          {"name": "once", "dedup": {"column": "generation"}},
                          {"name": "judge", "task": "text-generation", "input_mappings": {"instruction": "generation"},
                           "output_mappings": {"generation": "verdict"}}]}
    words = ["crimson", "blue", "scarlet", "green", "gold"]
    # row 0 fails at `answer`, so row 2 (answered "red", as row 0 will be) is kept; row 4 fails
    # at `judge`, after its "Echo: gold" claimed its place in the index
    red = [{"match": "scarlet", "reply": "red"}]
    await mock.ascript([{"match": "crimson", "status": 500}, {"match": "Echo: gold", "status": 500}, *red])
    async with serve(mock_settings(mock.url, max_retries=0)) as client:
        job = (await client.post("/jobs", json={"pipeline": pipeline,
                                                "rows": [{"instruction": w} for w in words]})).json()
        first = await wait_job(client, job["id"])
        assert first["progress"]["failed"] == 2
        assert {r["id"]: r["error"]["step"] for r in await results(client, job["id"]) if r["error"]} == \
            {"0": "answer", "4": "judge"}
        await mock.ascript([{"match": "crimson", "reply": "red"}, *red])
        before = len(await mock.arequests())
        assert (await client.post(f"/jobs/{job['id']}/retry")).status_code == 200
        done = await wait_job(client, job["id"])
        got = await results(client, job["id"])
        asked = prompts((await mock.arequests())[before:])
    assert sorted(asked) == ["Echo: gold", "crimson"]  # row 0's answer (then dropped), row 4's judge
    assert [r["id"] for r in got] == ["1", "2", "3", "4"]
    assert [r["verdict"] for r in got] == ["Echo: Echo: blue", "Echo: red", "Echo: Echo: green", "Echo: Echo: gold"]
    assert done["progress"]["completed"] == 5 and done["progress"]["failed"] == 0
    steps = done["progress"]["steps"]
    assert [(s["rows_in"], s["rows_out"], s["failed"], s["filtered"]) for s in steps.values()] == \
        [(5, 5, 0, 0), (5, 4, 0, 1), (4, 4, 0, 0)]


async def test_retry_after_a_budget_stop_goes_on_from_every_tree(mock):
    """A budget stops the job with trees half done: the retry with a new budget goes on from
    each tree as it was (the rows stored before the stop stay), and asks no step twice but
    the calls cut off by the stop. A tree that was done but not yet stored at the stop runs
    again from its input row (from the cache): through the dedup step, where its row finds
    its own claim and is kept."""
    n, limit = 24, 4
    pipeline = {"name": "three-once", "steps": [*THREE_STEPS["steps"], {"name": "once", "dedup": {"column": "generation"}}]}
    mock.configure(latency_ms=20)
    settings = mock_settings(mock.url, max_retries=0, max_concurrency=limit)
    settings.backends["mock"] = settings.backends["mock"].model_copy(update={"price_input_per_mtok": 1e6})
    async with serve(settings) as client:
        r = await client.post("/jobs", json={"pipeline": pipeline, "rows": rows(n), "max_cost_usd": 60})
        stopped = await wait_job(client, r.json()["id"], statuses=("cancelled",))
        assert "budget" in stopped["error"] and stopped["progress"]["completed"] < n
        kept = {r["id"]: r for r in await results(client, stopped["id"])}
        r = await client.post(f"/jobs/{stopped['id']}/retry", json={"max_cost_usd": 1e9})
        assert r.status_code == 200, r.text
        done = await wait_job(client, stopped["id"])
        got = await results(client, stopped["id"])
        asked = Counter(prompts(await mock.arequests()))
    assert done["status"] == "completed" and done["error"] is None
    assert done["progress"]["completed"] == n and done["progress"]["failed"] == 0
    assert [r["id"] for r in got] == [str(i) for i in range(n)]
    for r in got:
        assert r["error"] is None and r["generation"] == f"Echo: Echo: Echo: row {r['id']}"
        if r["id"] in kept:
            assert r == {**kept[r["id"]], "index": r["index"]}
    steps = done["progress"]["steps"]
    assert [(s["rows_in"], s["rows_out"], s["failed"], s["filtered"]) for s in steps.values()] == [(n, n, 0, 0)] * 4
    assert {k: done["usage"][k] for k in USAGE} == steps_usage(done)
    assert len(asked) == 3 * n and sum(asked.values()) - 3 * n <= limit


async def test_a_row_that_fails_again_is_stored_once_and_its_fine_siblings_are_not_made_again(mock):
    """Row 1's two generations come in one call; the second does not parse. The retry runs
    row 1's step again (its call answered by the cache, so it fails the same way) and goes
    on with 1.1 only: 1.0 went on the first time and is not made twice."""
    pipeline = {"steps": [
        {"name": "two", "task": "text-generation",
         "params": {"num_generations": 2, "structured_output": {"schema": {"type": "object"}}}},
        {"name": "echo", "task": "text-generation", "input_mappings": {"instruction": "generation"},
         "output_mappings": {"generation": "echoed"}}]}
    await mock.ascript([{"match": "row 1", "reply": ['{"a": 1}', "oops"]}])
    async with serve(mock_settings(mock.url, max_retries=0)) as client:
        job = (await client.post("/jobs", json={"pipeline": pipeline, "rows": rows(3)})).json()
        first = await wait_job(client, job["id"])
        before = await results(client, job["id"])
        assert [r["id"] for r in before if r["error"]] == ["1.1"]
        calls = (await mock.astats())["requests"]
        assert (await client.post(f"/jobs/{job['id']}/retry")).status_code == 200
        done = await wait_job(client, job["id"])
        after = await results(client, job["id"])
    assert (await mock.astats())["requests"] == calls
    ids = ["0.0", "0.1", "1.0", "1.1", "2.0", "2.1"]
    assert [r["id"] for r in before] == [r["id"] for r in after] == ids
    assert [r for r in after if r["id"] != "1.1"] == [r for r in before if r["id"] != "1.1"]
    assert after[3]["error"]["step"] == "two" and after[3]["metadata"]["cached_calls"] == 1
    assert done["progress"]["completed"] == 3 and done["progress"]["failed"] == 1
    for name, s in done["progress"]["steps"].items():
        was = first["progress"]["steps"][name]
        assert (s["rows_in"], s["rows_out"], s["failed"]) == (was["rows_in"], was["rows_out"], was["failed"])
    assert (done["progress"]["steps"]["two"]["rows_out"], done["progress"]["steps"]["two"]["failed"]) == (5, 1)
    assert {k: done["usage"][k] for k in USAGE} == steps_usage(done)
    assert done["usage"]["cached_calls"] == 1


async def test_retry_of_a_pipeline_job_with_nothing_failed_changes_nothing(mock):
    pipeline = {"steps": [{"name": "answer", "task": "text-generation"},
                          {"name": "none", "filter": "false"}]}  # no row is kept
    async with serve(mock_settings(mock.url)) as client:
        job = (await client.post("/jobs", json={"pipeline": pipeline, "rows": rows(3)})).json()
        done = await wait_job(client, job["id"])
        r = await client.post(f"/jobs/{job['id']}/retry")
        assert r.status_code == 200 and r.json() == done
    assert (await mock.astats())["requests"] == 3


# ---- the plan, on ledgers made by hand ----

def item(row_id: str, step: int, error: bool = False) -> dict:
    return Item(row_id, {"x": row_id}, step, {}, {"type": "llm_error", "step": "s"} if error else None).dump()


def counts(*per_step: list[float]) -> dict:
    return {name: values for name, values in zip("st", per_step)}


def test_plan_retry_by_unit():
    one = Usage(10, 5, 0.5, 0).as_dict()
    ledgers = {
        # done, nothing failed: stays
        0: {"done": True, "ids": ["0"], "usage": one, "base": Usage().as_dict(), "redo": [],
            "counts": counts([1, 1, 0, 0, 10, 5, 0.5, 0])},
        # done, row 1.1 of two failed at step s (its fan-out's other row is fine): goes on from row 1
        # at step s, keeping only 1.1's rows there
        1: {"done": True, "ids": ["1.0", "1.1"], "usage": one, "base": one,
            "redo": [{"item": item("1", 0), "ids": ["1.1"], "whole": False}],
            "counts": counts([1, 1, 1, 0, 20, 10, 1.0, 0], [1, 1, 0, 0, 0, 0, 0, 0])},
        # cut off by a cancel: goes on from its tree; the give-up row it left goes
        2: Tree({"2": Item("2", {}, 1)}, usage=Usage(10, 5, 0.5, 0), counts=counts([1, 1, 0, 0, 10, 5, 0.5, 0])).dump(),
        # done, but its stored rows are not all there: starts again
        3: {"done": True, "ids": ["3"], "usage": one, "base": Usage().as_dict(), "redo": [],
            "counts": counts([1, 1, 0, 0, 10, 5, 0.5, 0])},
    }
    import json
    ledgers[2] = json.loads(ledgers[2])
    present = {0: [(0, "0")], 1: [(1, "1.0"), (2, "1.1")], 2: [(3, "2")], 4: [(4, "4")]}
    plan = plan_retry(5, ["s", "t"], ledgers, present)
    assert plan.units == [1, 2, 3, 4] and plan.fresh == [3, 4] and plan.completed == 1
    assert sorted(plan.delete) == [2, 3, 4]  # 1.1, the give-up row of 2, the row of 4 (no ledger)
    one_on = Tree.load(json.loads(plan.trees[1]))
    assert list(one_on.going) == ["1"] and one_on.only == {"1": {"step": 0, "ids": ["1.1"]}}
    assert one_on.kept == ["1.0"] and one_on.redo == [] and one_on.usage == Usage()
    assert one_on.base == Usage(20, 10, 1.0, 0)
    two_on = Tree.load(json.loads(plan.trees[2]))
    assert list(two_on.going) == ["2"] and two_on.usage == Usage(10, 5, 0.5, 0)  # stored with it when done
    # banked: unit 0 whole, unit 1 its calls so far, unit 2 its earlier runs' (none); 3 and 4 nothing
    assert plan.usage == Usage(30, 15, 1.5, 0)
    s = unpacked(plan.counts["s"])
    assert (s["rows_in"], s["rows_out"], s["failed"]) == (3, 3, 0)  # 1.1's failure is taken off
    assert unpacked(plan.counts["t"])["rows_in"] == 1
