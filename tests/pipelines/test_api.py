"""Pipelines over HTTP against the mock LLM: definitions checked before any call, rows
streaming through steps, explode, llms fan-out, filter, dedup, keep, SSE."""

from __future__ import annotations

import json

from tests.service import mock_settings, serve

SEED_003 = {"name": "seed-003", "steps": [
    {"name": "gen_a", "task": "text-generation", "output_mappings": {"generation": "instruction"}},
    {"name": "gen_b", "task": "text-generation", "output_mappings": {"generation": "response"}},
]}


def sse_events(text: str) -> list[dict]:
    out = []
    for block in text.strip().split("\n\n"):
        event = {}
        for line in block.splitlines():
            if line.startswith(":"):
                continue
            name, _, value = line.partition(": ")
            event[name] = value
        if event:
            event["data"] = json.loads(event["data"])
            out.append(event)
    return out


async def test_two_steps_stream_rows_through(mock):
    async with serve(mock_settings(mock.url)) as client:
        r = await client.post("/pipelines", json={"pipeline": SEED_003, "rows": [{"instruction": "q0"},
                                                                                 {"instruction": "q1"}]})
        assert r.status_code == 200, r.text
        body = r.json()
        assert [row["id"] for row in body["rows"]] == ["0", "1"]
        row = body["rows"][0]
        assert row["instruction"] == "Echo: q0" and row["response"] == "Echo: Echo: q0"
        assert row["error"] is None and row["metadata"]["llm_calls"] == 2
        assert set(row["metadata"]["steps"]) == {"gen_a", "gen_b"}
        assert body["steps"]["gen_a"]["rows_in"] == 2 and body["steps"]["gen_b"]["rows_out"] == 2
        assert body["failed"] == 0 and body["filtered"] == 0 and isinstance(body["seed"], int)
    assert (await mock.astats())["requests"] == 4


def two_backends(mock_url: str, **extra):
    from app.config import BackendConfig, JobsConfig, Settings
    from tests.service import fresh_data_dir
    backends = {name: BackendConfig(provider="openai", base_url=mock_url + "/v1", model=f"model-{name}",
                                    max_concurrency=8, max_retries=0, timeout_s=10)
                for name in ("a", "b")}
    return Settings(backends=backends, jobs=JobsConfig(data_dir=fresh_data_dir()), **extra)


async def test_explode_filter_dedup_keep(mock):
    await mock.ascript([{"match": "queries that users could", "reply": "1. What is A?\n2. What is B?\n3. What is A?"}])
    pipeline = {"steps": [
        {"name": "brainstorm", "task": "self-instruct", "params": {"num_instructions": 3},
         "output_mappings": {"instructions": "instruction"}, "explode": "instruction"},
        {"name": "answer", "task": "text-generation"},
        {"name": "no_b", "filter": "'B' not in instruction"},
        {"name": "unique", "dedup": {"column": "instruction"}},
        {"name": "slim", "keep": ["instruction", "generation"]},
    ]}
    async with serve(mock_settings(mock.url)) as client:
        r = await client.post("/pipelines", json={"pipeline": pipeline, "rows": [{"input": "letters"}]})
        assert r.status_code == 200, r.text
        body = r.json()
    rows = body["rows"]
    assert len(rows) == 1 and rows[0]["id"] in ("0.0", "0.2")  # the first of the two "A" seen is kept
    assert {k for k in rows[0] if k not in ("metadata", "error")} == {"id", "instruction", "generation"}
    assert rows[0]["generation"] == "Echo: What is A?"
    assert body["filtered"] == 2
    steps = body["steps"]
    assert steps["brainstorm"] == {**steps["brainstorm"], "rows_in": 1, "rows_out": 3}
    assert (steps["answer"]["rows_in"], steps["no_b"]["filtered"], steps["unique"]["filtered"]) == (3, 1, 1)
    assert (await mock.astats())["requests"] == 1 + 3


async def test_minhash_drops_near_duplicates_only(mock):
    rows = [{"text": "the quick brown fox jumps over the lazy dog by the river bank today"},
            {"text": "The quick brown fox jumps over the lazy dog by the river bank today!"},
            {"text": "pipelines stream rows from one step to the next without waiting"}]
    pipeline = {"steps": [{"name": "near", "dedup": {"column": "text", "method": "minhash", "threshold": 0.7}}]}
    async with serve(mock_settings(mock.url)) as client:
        body = (await client.post("/pipelines", json={"pipeline": pipeline, "rows": rows})).json()
    ids = [r["id"] for r in body["rows"]]
    assert len(ids) == 2 and "2" in ids and body["filtered"] == 1


async def test_llms_grouped_then_scored(mock):
    await mock.ascript([{"match": "Rank the responses", "reply": "[1] Score: 2\n[2] Score: 5"}])
    pipeline = {"steps": [
        {"name": "answer", "task": "text-generation", "llms": [{"backend": "a"}, {"backend": "b"}]},
        {"name": "judge", "task": "quality-scorer", "input_mappings": {"responses": "grouped_generation"}},
    ]}
    async with serve(two_backends(mock.url)) as client:
        r = await client.post("/pipelines", json={"pipeline": pipeline, "rows": [{"instruction": "hi"}]})
        assert r.status_code == 200, r.text
    row = r.json()["rows"][0]
    assert row["grouped_generation"] == ["Echo: hi", "Echo: hi"]
    assert row["grouped_model_name"] == ["model-a", "model-b"]
    assert row["scores"] == [2, 5] and row["error"] is None
    assert "responses" not in row  # an input mapping renames for the task only
    assert len(row["metadata"]["steps"]["answer"]) == 2


async def test_bad_definitions_are_422_before_any_call(mock):
    cases = [
        ({"steps": [{"name": "x", "task": "no-such-task"}]}, ["x", "no-such-task"]),
        ({"steps": [{"name": "x", "task": "text-generation", "llm": {"backend": "nope"}}]}, ["x", "nope"]),
        ({"steps": [{"name": "x", "task": "text-generation", "params": {"num_generations": 0}}]},
         ["x", "num_generations"]),
        ({"steps": [{"name": "x", "task": "text-generation", "output_mappings": {"answer": "y"}}]}, ["x", "answer"]),
        ({"steps": [{"name": "x", "task": "text-generation", "input_mappings": {"prompt": "q"}}]}, ["x", "prompt"]),
        ({"steps": [{"name": "f", "filter": "generation |"}]}, ["f", "filter"]),
        ({"steps": [{"name": "k", "keep": ["instruction"]},
                    {"name": "j", "task": "quality-scorer"}]}, ["j", "responses"]),
        ({"steps": [{"name": "x", "task": "text-generation", "explode": "nothing"}]}, ["x", "nothing"]),
        ({"steps": [{"name": "g", "task": "magpie-generator", "params": {"num_rows": 2}}]}, ["g", "generator"]),
        ({"steps": [{"name": "x", "task": "text-generation", "frobnicate": 1}]}, ["x", "frobnicate"]),
        ({"steps": [{"name": "x", "filter": "1", "keep": ["a"]}]}, ["steps[0]"]),
    ]
    async with serve(mock_settings(mock.url)) as client:
        for pipeline, words in cases:
            r = await client.post("/pipelines", json={"pipeline": pipeline, "rows": [{"instruction": "q"}]})
            assert r.status_code == 422, (pipeline, r.text)
            for word in words:
                assert word in r.json()["detail"], (word, r.text)
        # a column the rows lack: the row, the column and the step that reads it
        r = await client.post("/pipelines", json={"pipeline": SEED_003, "rows": [{"instruction": "q"}, {"x": 1}]})
        assert r.status_code == 422 and all(w in r.json()["detail"] for w in ("rows[1]", "instruction", "gen_a"))
    assert (await mock.astats())["requests"] == 0


async def test_a_failing_row_marks_only_itself(mock):
    await mock.ascript([{"match": "Echo: bad", "status": 400}])
    async with serve(mock_settings(mock.url, max_retries=0)) as client:
        r = await client.post("/pipelines", json={"pipeline": SEED_003, "rows": [
            {"instruction": "good"}, {"instruction": "bad"}, {"instruction": "fine"}]})
        body = r.json()
    good, bad, fine = body["rows"]
    assert bad["error"]["step"] == "gen_b" and bad["error"]["type"] == "llm_error"
    assert bad["instruction"] == "Echo: bad" and bad["response"] is None
    assert good["error"] is None and fine["response"] == "Echo: Echo: fine"
    assert body["failed"] == 1 and body["steps"]["gen_b"]["failed"] == 1


async def test_sse_rows_then_done(mock):
    async with serve(mock_settings(mock.url)) as client:
        r = await client.post("/pipelines", json={"pipeline": SEED_003, "stream": True,
                                                  "rows": [{"instruction": f"q{i}"} for i in range(5)]})
        assert r.headers["content-type"].startswith("text/event-stream")
        events = sse_events(r.text)
    rows = [e for e in events if e["event"] == "row"]
    assert sorted(e["data"]["id"] for e in rows) == [str(i) for i in range(5)]
    assert all(e["data"]["row"]["id"] == e["data"]["id"] for e in rows)
    assert events[-1]["event"] == "done"
    done = events[-1]["data"]
    assert done["rows"] == 5 and done["failed"] == 0 and done["steps"]["gen_b"]["rows_out"] == 5


async def test_dry_run_counts_every_step_without_calling(mock):
    pipeline = {"steps": [
        {"name": "brainstorm", "task": "self-instruct", "params": {"num_instructions": 3},
         "output_mappings": {"instructions": "instruction"}, "explode": "instruction"},
        {"name": "answer", "task": "text-generation", "llm": {"generation_kwargs": {"max_new_tokens": 10}}},
        {"name": "short", "filter": "generation | length < 5"},
        {"name": "again", "task": "text-generation", "input_mappings": {"instruction": "generation"},
         "llm": {"generation_kwargs": {"max_new_tokens": 20}}},
    ]}
    body = {"pipeline": pipeline, "rows": [{"input": "a"}, {"input": "b"}], "dry_run": True}
    async with serve(mock_settings(mock.url)) as client:
        estimate = (await client.post("/pipelines", json=body)).json()
        as_job = await client.post("/jobs", json=body)
        assert as_job.status_code == 200 and as_job.json() == estimate
        assert (await client.get("/jobs")).json()["jobs"] == []
    assert estimate["calls"] == 2 * 3 and estimate["input_tokens"] > 0
    assert estimate["max_output_tokens"] == 2 * 256 + 2 * 10 + 2 * 20
    assert (await mock.astats())["requests"] == 0


async def test_step_events_while_rows_move(mock):
    mock.configure(latency_ms=300)
    four = {"steps": [{"name": f"s{k}", "task": "text-generation"} for k in range(4)]}
    async with serve(mock_settings(mock.url)) as client:
        r = await client.post("/pipelines", json={"pipeline": four, "stream": True, "rows": [{"instruction": "q"}]})
        events = sse_events(r.text)
    steps = [e["data"]["steps"] for e in events if e["event"] == "step"]
    assert steps and all(set(s) == {"s0", "s1", "s2", "s3"} for s in steps)
    assert steps[0]["s0"]["rows_out"] == 1 and events[-1]["event"] == "done"
    assert events[-2]["event"] == "row" and events[-2]["data"]["row"]["generation"] == "Echo: q"
    # the same prompt at every step: four calls, four samples (the request's cache numbers them across steps)
    assert (await mock.astats())["requests"] == 4


async def test_pipeline_files(mock, tmp_path):
    (tmp_path / "good.toml").write_text('description = "one step"\n[[steps]]\nname = "a"\ntask = "text-generation"\n')
    (tmp_path / "broken.json").write_text('{"steps": [{"name": "a", "task": "text-generation", "filter": "x"}]}')
    (tmp_path / "notes.txt").write_text("not a pipeline")
    from app.config import PipelinesConfig
    async with serve(mock_settings(mock.url, pipelines=PipelinesConfig(dir=str(tmp_path)))) as client:
        listed = (await client.get("/pipelines")).json()["pipelines"]
        assert [(p["name"], p["description"]) for p in listed] == [("good", "one step")]
        r = await client.get("/pipelines/broken")
        assert r.status_code == 422 and "broken.json" in r.json()["detail"] and "steps[0]" in r.json()["detail"]
        good = (await client.get("/pipelines/good")).json()
        assert good["inputs"] == ["instruction"] and good["outputs"] == ["instruction", "generation", "model_name"]
        r = await client.post("/pipelines/good", json={"rows": [{"instruction": "hi"}]})
        assert r.json()["pipeline"] == "good" and r.json()["rows"][0]["generation"] == "Echo: hi"


async def test_hostile_expressions_fail_their_row_only(mock):
    pipeline = {"steps": [
        {"name": "busy", "filter": "(range(10**7) | list | length) > 0 if instruction == 'loop' else true"},
        {"name": "pick", "keep": {"instruction": "instruction", "big": "'x' * 10**9 if instruction == 'big' else 1"}},
    ]}
    rows = [{"instruction": "loop"}, {"instruction": "big"}, {"instruction": "fine"}]
    async with serve(mock_settings(mock.url)) as client:
        body = (await client.post("/pipelines", json={"pipeline": pipeline, "rows": rows})).json()
        loop, big, fine = body["rows"]
        assert loop["error"]["type"] == "filter_error" and loop["error"]["step"] == "busy"
        assert big["error"]["type"] == "keep_error" and big["error"]["step"] == "pick"
        assert fine == {**fine, "instruction": "fine", "big": 1, "error": None}
        r = await client.post("/pipelines", json={"pipeline": {"steps": [{"name": "f", "filter": "instruction.__class__.__mro__"}]},
                                                  "rows": rows})
        assert r.status_code == 200 and all(row["error"]["type"] == "filter_error" for row in r.json()["rows"])


async def test_a_keep_step_can_make_the_first_task_its_columns(mock):
    pipeline = {"steps": [{"name": "ask", "keep": {"instruction": "'Say ' ~ word"}},
                          {"name": "answer", "task": "text-generation"}]}
    async with serve(mock_settings(mock.url)) as client:
        body = (await client.post("/pipelines", json={"pipeline": pipeline, "rows": [{"word": "hi"}]})).json()
    assert body["rows"][0]["generation"] == "Echo: Say hi"


async def test_a_row_keeps_its_backend_slot_from_step_to_step(mock):
    """One slot, three rows, three steps: each row runs its three calls back to back. A slot
    freed between a row's calls would go to the next row's first step, and every row would
    finish only at the end (the first final row over SSE comes after 3 x latency)."""
    steps = [{"name": "one", "task": "text-generation", "output_mappings": {"generation": "a"}},
             {"name": "two", "task": "text-generation", "input_mappings": {"instruction": "a"},
              "output_mappings": {"generation": "b"}},
             {"name": "three", "task": "text-generation", "input_mappings": {"instruction": "b"}}]
    async with serve(mock_settings(mock.url, max_concurrency=1)) as client:
        r = await client.post("/pipelines", json={"pipeline": {"steps": steps}, "cache": False,
                                                  "rows": [{"instruction": f"q{i}"} for i in range(3)]})
        assert r.status_code == 200 and r.json()["failed"] == 0, r.text
    prompts = [req["body"]["messages"][-1]["content"] for req in await mock.arequests()]
    assert prompts == [p for i in range(3) for p in (f"q{i}", f"Echo: q{i}", f"Echo: Echo: q{i}")]
