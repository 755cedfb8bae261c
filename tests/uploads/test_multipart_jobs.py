"""POST /jobs with multipart/form-data: the rows in a `file` part (.jsonl, .json, .csv,
.parquet), the job in a `job` part; bad files are a 422 naming the line, row or column,
before anything is queued or called. Against a real serve + worker and the mock LLM."""

from __future__ import annotations

import io
import json

import httpx
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from app.config import BackendConfig, JobsConfig, ServerConfig, Settings
from tests.jobs.conftest import RedisServer, wait_for
from tests.service import serve

JOB = json.dumps({"task": "text-generation", "llm": {"generation_kwargs": {"max_new_tokens": 30}}})


def as_file(rows: list[dict], fmt: str) -> bytes:
    if fmt == "jsonl":
        return "".join(json.dumps(r) + "\n" for r in rows).encode()
    if fmt == "json":
        return json.dumps(rows).encode()
    if fmt == "csv":
        columns = list(rows[0])
        return ("\n".join([",".join(columns), *(",".join(str(r[c]) for c in columns) for r in rows)]) + "\n").encode()
    out = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), out)
    return out.getvalue()


async def finished(client: httpx.AsyncClient, job_id: str) -> dict:
    async def done():
        job = (await client.get(f"/jobs/{job_id}")).json()
        return job if job["status"] in ("completed", "failed", "cancelled") else None
    return await wait_for(done, timeout=60)


@pytest.mark.parametrize("fmt", ["jsonl", "json", "csv", "parquet"])
async def test_a_file_becomes_a_job(service, mock, fmt):
    # three batches of 1,000; prompts of their own (the LLM-call cache would answer repeats)
    rows = [{"instruction": f"{fmt} row {i}", "topic": f"t{i % 3}"} for i in range(2500)]
    async with httpx.AsyncClient(base_url=service.url, timeout=60) as client:
        r = await client.post("/jobs", files={"file": (f"rows.{fmt}", as_file(rows, fmt))}, data={"job": JOB})
        assert r.status_code == 202, r.text
        job = r.json()
        assert job["task"] == "text-generation" and job["progress"]["total"] == 2500
        assert (await finished(client, job["id"]))["progress"] == {"total": 2500, "completed": 2500, "failed": 0}
        results = [json.loads(line) for line in (await client.get(f"/jobs/{job['id']}/results")).text.splitlines()]
    assert [r["index"] for r in results] == list(range(2500))
    assert all(r["generation"] == f"Echo: {fmt} row {r['index']}" and r["topic"] == f"t{r['index'] % 3}"
               for r in results)
    assert mock.stats()["requests"] == 2500
    assert {req["body"]["max_tokens"] for req in mock.requests()} == {30}


async def test_several_rows_per_input_and_the_seed_are_kept_across_batches(service, mock):
    rows = [{"instruction": f"row {i}"} for i in range(1500)]
    job = json.dumps({"task": "text-generation", "params": {"num_generations": 2}})
    async with httpx.AsyncClient(base_url=service.url, timeout=60) as client:
        r = await client.post("/jobs", files={"file": ("rows.jsonl", as_file(rows, "jsonl"))}, data={"job": job})
        assert r.status_code == 202, r.text
        done = await finished(client, r.json()["id"])
        assert done["progress"] == {"total": 3000, "completed": 3000, "failed": 0}
        results = [json.loads(line) for line in (await client.get(f"/jobs/{done['id']}/results")).text.splitlines()]
    assert [r["instruction"] for r in results[2998:]] == ["row 1499", "row 1499"]
    assert isinstance(done["seed"], int)


@pytest.mark.parametrize("name, content, job, words", [
    ("rows.txt", b"a", JOB, "rows.txt: input must end in"),
    ("rows.csv", b"instruction,b\nx,1\ny,2,3\n", JOB, "rows.csv line 3: 3 fields, the header has 2"),
    ("rows.jsonl", b'{"instruction": "a"}\n{"instruction": \n', JOB, "rows.jsonl line 2: invalid JSON"),
    ("rows.parquet", None, JOB, "rows.parquet: the Parquet file has no columns"),
    ("rows.csv", b"instruction\nfine\n" * 1 + b"\n".join([b"ok"] * 1200) + b"\n\n", JOB, None),
    ("rows.csv", b"prompt\nno instruction here\n", JOB, "rows.csv line 2: instruction: missing column 'instruction'"),
    ("rows.jsonl", b"".join(b'{"instruction": "ok"}\n' for _ in range(1500)) + b'{"instruction": 3}\n', JOB,
     "rows.jsonl line 1501: instruction"),
    ("rows.jsonl", b'{"instruction": "a"}\n', '{"params": {}}', "task"),  # the job part names no task
    ("rows.jsonl", b'{"instruction": "a"}\n', '{"task": "text-generation", "rows": []}', "job.rows"),
    ("rows.jsonl", b'{"instruction": "a"}\n', "[1]", "job: expected a JSON object"),
    ("rows.jsonl", b"", JOB, "rows.jsonl holds no rows"),
])
async def test_bad_files_are_refused_before_anything_runs(service, mock, name, content, job, words):
    if content is None:
        out = io.BytesIO()
        pq.write_table(pa.table({}), out)
        content = out.getvalue()
    async with httpx.AsyncClient(base_url=service.url, timeout=60) as client:
        before = len((await client.get("/jobs")).json()["jobs"])
        r = await client.post("/jobs", files={"file": (name, content)}, data={"job": job})
        if words is None:  # the control case: a good file of 1,201 rows is accepted
            assert r.status_code == 202, r.text
            await finished(client, r.json()["id"])
            return
        assert r.status_code == 422, r.text
        assert words in r.json()["detail"], r.json()
        assert len((await client.get("/jobs")).json()["jobs"]) == before
    assert mock.stats()["requests"] == 0


async def test_a_failed_row_past_the_first_batch_is_retried(service, mock):
    mock.script([{"match": "retry me", "status": 400}])
    rows = [{"instruction": f"upload retry {i}"} for i in range(1500)]
    rows[1234]["instruction"] = "retry me"
    async with httpx.AsyncClient(base_url=service.url, timeout=60) as client:
        r = await client.post("/jobs", files={"file": ("rows.jsonl", as_file(rows, "jsonl"))}, data={"job": JOB})
        job_id = r.json()["id"]
        assert (await finished(client, job_id))["progress"] == {"total": 1500, "completed": 1499, "failed": 1}
        mock.reset()
        r = await client.post(f"/jobs/{job_id}/retry")
        assert r.status_code == 200, r.text
        assert (await finished(client, job_id))["progress"] == {"total": 1500, "completed": 1500, "failed": 0}
        results = [json.loads(line) for line in (await client.get(f"/jobs/{job_id}/results")).text.splitlines()]
    assert results[1234]["generation"] == "Echo: retry me" and results[1234]["error"] is None
    assert [r["body"]["messages"][-1]["content"] for r in mock.requests()] == ["retry me"]


async def test_no_file_part_and_json_bodies_still_work(service, mock):
    async with httpx.AsyncClient(base_url=service.url, timeout=60) as client:
        r = await client.post("/jobs", data={"job": JOB}, files={"other": ("x.jsonl", b"{}")})
        assert r.status_code == 422 and "a part named `file`" in r.json()["detail"]
        r = await client.post("/jobs", json={"task": "text-generation", "rows": [{"instruction": "json"}]})
        assert r.status_code == 202, r.text
        assert (await finished(client, r.json()["id"]))["status"] == "completed"
        # /docs shows both bodies of the one operation
        bodies = (await client.get("/openapi.json")).json()["paths"]["/jobs"]["post"]["requestBody"]["content"]
        assert set(bodies) == {"application/json", "multipart/form-data"}
        assert bodies["multipart/form-data"]["schema"]["properties"]["file"]["format"] == "binary"


async def test_limits_count_the_whole_file(mock, tmp_path):
    """Rows and output rows are counted over every batch, not per batch (a service of its own, small limits)."""
    redis = RedisServer(tmp_path)
    settings = Settings(server=ServerConfig(max_rows_per_request=1500, max_output_rows_per_request=2000),
                        backends={"mock": BackendConfig(provider="openai", base_url=mock.url + "/v1", model="m")},
                        jobs=JobsConfig(redis_url=redis.url, consume=False))
    try:
        async with serve(settings) as client:
            many = as_file([{"instruction": f"limit {i}"} for i in range(1600)], "jsonl")
            r = await client.post("/jobs", files={"file": ("rows.jsonl", many)}, data={"job": JOB})
            assert r.status_code == 413 and "max_rows_per_request (1500)" in r.json()["detail"]
            doubled = json.dumps({"task": "text-generation", "params": {"num_generations": 2}})
            some = as_file([{"instruction": f"limit {i}"} for i in range(1200)], "jsonl")
            r = await client.post("/jobs", files={"file": ("rows.jsonl", some)}, data={"job": doubled})
            assert r.status_code == 413 and "max_output_rows_per_request (2000)" in r.json()["detail"]
            assert (await client.get("/jobs")).json()["jobs"] == []
    finally:
        redis.close()
