"""`synthserve run --server`: a file through a job on a real server process and worker,
into JSONL, CSV or Parquet; failed rows, resume, exit codes, plain progress lines."""

from __future__ import annotations

import csv
import json
import os
import time

import httpx
import pandas as pd
import pyarrow.parquet as pq

from tests.jobs.conftest import RedisServer
from tests.ops.conftest import Process, wait_healthy
from tests.service import free_port

from .conftest import read_jsonl, synthserve, write_jsonl


def rows(n: int, prefix: str = "row") -> list[dict]:
    return [{"instruction": f"{prefix} {i}"} for i in range(n)]


def test_jsonl_in_jsonl_out(service, mock, tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", rows(12))
    out = tmp_path / "out.jsonl"
    r = synthserve("run", "text-generation", "--input", str(src), "--output", str(out), "--server", service.url,
                   "--max-new-tokens", "50")
    assert r.returncode == 0, r.stdout + r.stderr
    got = read_jsonl(out)
    assert [row["index"] for row in got] == list(range(12))
    assert all(row["generation"] == f"Echo: row {row['index']}" and row["error"] is None for row in got)
    assert all(req["body"]["max_tokens"] == 50 for req in mock.requests())
    # not a terminal: plain progress lines, the last one complete
    lines = [line for line in r.stdout.splitlines() if "rows/s" in line]
    assert lines and lines[-1].startswith("job_") and " 12/12 rows" in lines[-1]
    assert "wrote 12 rows" in r.stdout
    assert not (tmp_path / "out.jsonl.partial").exists()


def test_text_with_line_separators_other_than_cr_lf_comes_through(service, mock, tmp_path):
    """U+2028, U+2029 and U+0085 are raw in the server's JSON (ensure_ascii=False); the event
    stream is cut into lines only at CR and LF (str.splitlines would cut the JSON apart)."""
    data = [{"instruction": f"one\u2028two\x85three\u2029four {i}"} for i in range(6)]
    src = write_jsonl(tmp_path / "in.jsonl", data)
    out = tmp_path / "out.jsonl"
    r = synthserve("run", "text-generation", "--input", str(src), "--output", str(out), "--server", service.url)
    assert r.returncode == 0, r.stdout + r.stderr
    assert [row["generation"] for row in read_jsonl(out)] == [f"Echo: {row['instruction']}" for row in data]


def test_failed_rows_exit_1_and_a_rerun_runs_only_them(service, mock, tmp_path):
    mock.script([{"match": "bad", "status": 400}])
    data = rows(10)
    data[3]["instruction"] = data[7]["instruction"] = "bad row"
    src = write_jsonl(tmp_path / "in.jsonl", data)
    out = tmp_path / "out.parquet"
    r = synthserve("run", "text-generation", "-i", str(src), "-o", str(out), "--server", service.url)
    assert r.returncode == 1, r.stdout + r.stderr
    table = pq.read_table(out)
    errors = {row["index"]: row["error"] for row in table.to_pylist()}
    assert sorted(i for i, e in errors.items() if e) == [3, 7]
    assert errors[3]["type"] == "llm_error"

    mock.reset()  # the backend works again: the rerun sends only rows 3 and 7
    r = synthserve("run", "text-generation", "-i", str(src), "-o", str(out), "--server", service.url)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "resuming: 8 of 10 rows" in r.stdout
    assert sorted(req["body"]["messages"][-1]["content"] for req in mock.requests()) == ["bad row", "bad row"]
    df = pd.read_parquet(out)
    assert list(df["index"]) == list(range(10)) and df["error"].isna().all()
    assert df.loc[3, "generation"] == "Echo: bad row"
    # nested columns stay nested: metadata is a struct, usage inside it too
    assert df.loc[0, "metadata"]["usage"]["output_tokens"] == 3

    r = synthserve("run", "text-generation", "-i", str(src), "-o", str(out), "--server", service.url)
    assert r.returncode == 0 and "nothing to do" in r.stdout


def test_reattaching_to_a_retried_job_reads_its_last_run(service, mock, tmp_path):
    mock.script([{"match": "flaky", "status": 400}])
    data = rows(6, "retried")
    data[2]["instruction"] = "flaky row"
    src = write_jsonl(tmp_path / "in.jsonl", data)
    r = synthserve("run", "text-generation", "-i", str(src), "-o", str(tmp_path / "first.jsonl"), "--server", service.url)
    assert r.returncode == 1
    job_id = next(w for w in r.stdout.split() if w.startswith("job_"))
    mock.script([{"match": "flaky", "latency_ms": 8000}])  # answers now, slowly: the retry is still running
    assert synthserve("jobs", "retry", job_id, "--server", service.url).returncode == 0
    assert httpx.get(f"{service.url}/jobs/{job_id}").json()["status"] in ("queued", "running")
    # the event log holds both runs: the first `done` is read past, to the retry's
    out = tmp_path / "reattached.jsonl"
    r = synthserve("run", "--job", job_id, "-o", str(out), "--server", service.url)
    assert r.returncode == 0, r.stdout + r.stderr
    got = read_jsonl(out)
    assert len(got) == 6 and all(row["error"] is None for row in got) and got[2]["generation"] == "Echo: flaky row"


def test_csv_in_csv_out_with_several_rows_per_input(service, mock, tmp_path):
    src = tmp_path / "in.csv"
    src.write_text("instruction,topic\nfirst,a\nsecond,b\n")
    out = tmp_path / "out.csv"
    r = synthserve("run", "text-generation", "-i", str(src), "-o", str(out), "--server", service.url,
                   "--params", '{"num_generations": 2}', "--no-raw")
    assert r.returncode == 0, r.stdout + r.stderr
    with out.open() as f:
        got = list(csv.DictReader(f))
    assert [(g["index"], g["instruction"], g["topic"]) for g in got] == [
        ("0", "first", "a"), ("1", "first", "a"), ("2", "second", "b"), ("3", "second", "b")]
    assert "raw_input" not in got[0]["metadata"]


def test_bad_arguments_exit_2(service, mock, tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", rows(2))
    missing = [{"prompt": "no instruction"}]
    cases = [
        (["run", "text-generation", "-i", str(tmp_path / "nope.jsonl"), "-o", str(tmp_path / "o.jsonl")], "nope.jsonl"),
        (["run", "text-generation", "-i", str(src), "-o", str(tmp_path / "o.txt")], "output must end in"),
        (["run", "no-such-task", "-i", str(src), "-o", str(tmp_path / "o.jsonl")], "no-such-task"),
        (["run", "text-generation", "-i", str(src), "-o", str(tmp_path / "o.jsonl"), "--params", "{nope"], "--params"),
        (["run", "text-generation", "-i", str(src), "-o", str(tmp_path / "o.jsonl"), "--params", '{"num_generations": 0}'],
         "num_generations"),
        (["run", "text-generation", "-i", str(write_jsonl(tmp_path / "m.jsonl", missing)), "-o", str(tmp_path / "o.jsonl")],
         "rows[0].instruction"),
    ]
    for args, words in cases:
        r = synthserve(*args, "--server", service.url)
        assert r.returncode == 2, (args, r.stdout, r.stderr)
        assert words in r.stderr, (args, r.stderr)
    assert mock.stats()["requests"] == 0


def test_jobs_commands(service, mock, tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", rows(3))
    r = synthserve("run", "text-generation", "-i", str(src), "-o", str(tmp_path / "o.jsonl"), "--server", service.url)
    job_id = next(w for w in r.stdout.split() if w.startswith("job_"))
    listed = synthserve("jobs", "list", "--server", service.url)
    assert listed.returncode == 0 and job_id in listed.stdout and "completed" in listed.stdout
    shown = synthserve("jobs", "show", job_id, "--server", service.url)
    assert shown.returncode == 0 and '"completed"' in shown.stdout
    for fmt in ("jsonl", "csv", "parquet"):
        path = tmp_path / f"results.{fmt}"
        got = synthserve("jobs", "results", job_id, "--output", str(path), "--server", service.url)
        assert got.returncode == 0, got.stderr
        df = pd.read_json(path, lines=True) if fmt == "jsonl" else pd.read_csv(path) if fmt == "csv" else pd.read_parquet(path)
        assert list(df["generation"]) == ["Echo: row 0", "Echo: row 1", "Echo: row 2"]
    retried = synthserve("jobs", "retry", job_id, "--server", service.url)  # nothing failed: nothing to do
    assert retried.returncode == 0 and json.loads(retried.stdout)["id"] == job_id, retried.stderr
    unknown = synthserve("jobs", "cancel", "job_nope", "--server", service.url)
    assert unknown.returncode == 2 and "job_nope" in unknown.stderr
    assert httpx.get(f"{service.url}/jobs/{job_id}").json()["status"] in ("completed", "queued", "running")


def test_a_bad_row_found_on_resume_is_named_by_its_place_in_the_file(service, mock, tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", rows(4))
    out = tmp_path / "out.jsonl"
    assert synthserve("run", "text-generation", "-i", str(src), "-o", str(out), "--server", service.url).returncode == 0
    write_jsonl(src, [*rows(4), {"instruction": "fine"}, {"prompt": "no instruction"}])
    r = synthserve("run", "text-generation", "-i", str(src), "-o", str(out), "--server", service.url)
    assert r.returncode == 2 and "rows[5].instruction" in r.stderr, r.stderr  # not rows[1], its place in the job
    assert len(read_jsonl(out)) == 4


def test_api_keys(mock, tmp_path, monkeypatch):
    redis = RedisServer(tmp_path)
    config = tmp_path / "keys.toml"
    config.write_text(f'[server]\napi_keys_env = "CLIENT_TEST_KEYS"\n[backends.mock]\nprovider = "openai"\n'
                      f'base_url = "{mock.url}/v1"\nmodel = "mock-model"\n'
                      f'[jobs]\nredis_url = "{redis.url}"\nconsume = true\n')
    port = free_port()
    server = Process(["serve", "--config", str(config), "--port", str(port)], tmp_path / "serve.log",
                     {**os.environ, "PYTHONUNBUFFERED": "1", "CLIENT_TEST_KEYS": "key-a,key-b"})
    try:
        url = f"http://127.0.0.1:{port}"
        wait_healthy(url, server)
        src = write_jsonl(tmp_path / "in.jsonl", rows(2))
        args = ["run", "text-generation", "-i", str(src), "-o", str(tmp_path / "o.jsonl"), "--server", url]
        r = synthserve(*args)
        assert r.returncode == 2 and "missing API key" in r.stderr
        r = synthserve(*args, "--api-key", "key-a")
        assert r.returncode == 0, r.stderr
        job_id = next(w for w in r.stdout.split() if w.startswith("job_"))
        monkeypatch.setenv("SYNTHSERVE_API_KEY", "key-b")  # another key: another owner, the job is not found
        other = synthserve("jobs", "show", job_id, "--server", url)
        assert other.returncode == 2 and job_id in other.stderr
        mine = synthserve("jobs", "list", "--server", url, "--api-key", "key-a")
        assert mine.returncode == 0 and job_id in mine.stdout
    finally:
        server.close()
        redis.close()


def test_a_pipeline_on_a_server_resumed_and_not_in_process(mock, tmp_path):
    redis = RedisServer(tmp_path)
    pipelines = tmp_path / "pipelines"
    pipelines.mkdir()
    (pipelines / "two-steps.toml").write_text(
        'name = "two-steps"\n[[steps]]\nname = "ask"\ntask = "text-generation"\n'
        'output_mappings = { generation = "instruction" }\n'
        '[[steps]]\nname = "answer"\ntask = "text-generation"\noutput_mappings = { generation = "response" }\n')
    config = tmp_path / "pipelines.toml"
    config.write_text(f'[backends.mock]\nprovider = "openai"\nbase_url = "{mock.url}/v1"\nmodel = "mock-model"\n'
                      f'[jobs]\nredis_url = "{redis.url}"\nconsume = true\n[pipelines]\ndir = "{pipelines}"\n')
    port = free_port()
    server = Process(["serve", "--config", str(config), "--port", str(port)], tmp_path / "serve.log",
                     {**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        url = f"http://127.0.0.1:{port}"
        wait_healthy(url, server)
        data = rows(4, "seed")
        data[2]["instruction"] = "bad seed"
        src = write_jsonl(tmp_path / "in.jsonl", data)
        out = tmp_path / "out.parquet"
        mock.script([{"match": "bad", "status": 400}])
        r = synthserve("run", "two-steps", "-i", str(src), "-o", str(out), "--server", url)
        assert r.returncode == 1, r.stdout + r.stderr
        got = pq.read_table(out).to_pylist()
        assert [row["id"] for row in got] == ["0", "1", "2", "3"] and got[2]["error"]["step"] == "ask"

        mock.reset()  # the second run sends input row 2 alone, as the job's row 0, and files its rows under id 2
        r = synthserve("run", "two-steps", "-i", str(src), "-o", str(out), "--server", url)
        assert r.returncode == 0 and "resuming: 3 of 4 input rows" in r.stdout, r.stdout + r.stderr
        got = pq.read_table(out).to_pylist()
        assert [row["id"] for row in got] == ["0", "1", "2", "3"]
        assert all(row["error"] is None for row in got) and got[2]["response"] == "Echo: Echo: bad seed"
        assert got[1]["response"] == "Echo: Echo: seed 1"
        assert len(mock.requests()) == 2  # ask and answer, for that row only
        r = synthserve("run", "two-steps", "-i", str(src), "-o", str(out), "--server", url)
        assert r.returncode == 0 and "nothing to do" in r.stdout
        local = synthserve("run", "two-steps", "-i", str(src), "-o", str(tmp_path / "o2.jsonl"), "--config", str(config))
        assert local.returncode == 2 and "a pipeline runs on a server" in local.stderr
    finally:
        server.close()
        redis.close()


def test_jobs_retry_refresh_samples_again_the_row_that_failed(service, mock, tmp_path):
    schema = {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}
    mock.script([{"match": "take 1", "reply": "not json"}, {"match": "take", "reply": '{"name": "fig"}'}])
    src = write_jsonl(tmp_path / "in.jsonl", [{"instruction": f"take {i}"} for i in range(3)])
    r = synthserve("run", "text-generation", "-i", str(src), "-o", str(tmp_path / "o.jsonl"), "--server", service.url,
                   "--params", json.dumps({"structured_output": {"schema": schema}}))
    assert r.returncode == 1, r.stdout + r.stderr  # row 1 could not be parsed
    job_id = next(w for w in r.stdout.split() if w.startswith("job_"))
    mock.script([{"match": "take", "reply": '{"name": "plum"}'}])
    before = mock.stats()["requests"]
    refused = synthserve("jobs", "retry", job_id, "--max-cost-usd", "0", "--server", service.url)
    assert refused.returncode == 2 and "max_cost_usd" in refused.stderr, refused.stderr
    retried = synthserve("jobs", "retry", job_id, "--refresh", "--server", service.url)
    assert retried.returncode == 0, retried.stderr
    out = tmp_path / "again.jsonl"
    assert synthserve("run", "--job", job_id, "-o", str(out), "--server", service.url).returncode == 0
    got = read_jsonl(out)
    # only the failed row called again (a plain retry would serve it the stored answer)
    assert mock.stats()["requests"] - before == 1
    assert [row["generation_parsed"] for row in got] == [{"name": "fig"}, {"name": "plum"}, {"name": "fig"}]
