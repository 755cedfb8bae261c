"""app/formats.py: input files read or refused naming the line or column; results as
CSV and Parquet from GET /jobs/{id}/results?format=..., read back with pandas and
`datasets` (offline: a local Parquet file, never the Hub)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys

import httpx
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from app import formats
from tests.conftest import ROOT
from tests.jobs.conftest import wait_for

from .conftest import write_jsonl


def test_reads_every_input_format(tmp_path):
    rows = [{"instruction": "a", "messages": [{"role": "user", "content": "hi"}]}, {"instruction": "b", "messages": []}]
    write_jsonl(tmp_path / "r.jsonl", rows)
    (tmp_path / "r.json").write_text(json.dumps({"rows": rows}))
    formats.write_rows(tmp_path / "r.csv", rows)
    formats.write_rows(tmp_path / "r.parquet", rows)
    for name in ("r.jsonl", "r.json", "r.csv", "r.parquet"):
        assert formats.read_rows(tmp_path / name) == rows, name


@pytest.mark.parametrize("name, content, words", [
    ("x.txt", "a", "input must end in"),
    ("bad.jsonl", '{"a": 1}\n{"a": \n', "bad.jsonl line 2: invalid JSON"),
    ("list.jsonl", '{"a": 1}\n[1]\n', "list.jsonl line 2: expected a JSON object"),
    ("bad.json", '[{"a": 1}, 3]', "bad.json row 1: expected a JSON object"),
    ("ragged.csv", "a,b\n1,2\n1,2,3\n", "ragged.csv line 3: 3 fields, the header has 2"),
    ("quote.csv", 'a,b\n1,"2\n', "quote.csv line"),
    ("twice.csv", "a,a\n1,2\n", "a column name appears twice"),
    ("latin.csv", b"a\n\xe9t\xe9\n", "not UTF-8"),
    ("junk.parquet", b"PAR1 not really", "not a readable Parquet file"),
])
def test_bad_input_files_name_the_place(tmp_path, name, content, words):
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(formats.FormatError, match=words.replace("(", r"\(")):
        formats.read_rows(path)


def test_a_parquet_file_without_columns_is_refused(tmp_path):
    pq.write_table(pa.table({}), tmp_path / "empty.parquet")
    with pytest.raises(formats.FormatError, match="no columns"):
        formats.read_rows(tmp_path / "empty.parquet")


def test_columns_that_disagree_are_written_as_json_text(tmp_path):
    rows = [{"index": 0, "v": "text", "w": {}}, {"index": 1, "v": [1, 2], "w": {}}]
    formats.write_rows(tmp_path / "o.parquet", rows)
    table = pq.read_table(tmp_path / "o.parquet")
    assert table.schema.field("v").type == pa.string()
    assert table.column("v").to_pylist() == ['"text"', "[1, 2]"]
    assert table.column("w").to_pylist() == ["{}", "{}"]  # Parquet has no struct without fields


async def test_job_results_as_csv_and_parquet(service, mock, tmp_path):
    mock.script([{"match": "bad", "status": 400}])
    rows = [{"instruction": f"row {i}", "tags": ["x", str(i)]} for i in range(25)]
    rows[4]["instruction"] = "bad row"
    async with httpx.AsyncClient(base_url=service.url, timeout=30) as client:
        job = (await client.post("/jobs", json={"task": "text-generation", "rows": rows})).json()

        async def finished():
            return (await client.get(f"/jobs/{job['id']}")).json()["status"] == "completed"
        await wait_for(finished)

        r = await client.get(f"/jobs/{job['id']}/results", params={"format": "csv"})
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
        df = pd.read_csv(io.StringIO(r.text))
        assert list(df["index"]) == list(range(25))
        assert df.loc[7, "generation"] == "Echo: row 7" and json.loads(df.loc[7, "tags"]) == ["x", "7"]
        assert json.loads(df.loc[4, "error"])["type"] == "llm_error"

        r = await client.get(f"/jobs/{job['id']}/results", params={"format": "parquet"})
        assert r.status_code == 200 and r.headers["content-type"] == "application/vnd.apache.parquet"
        path = tmp_path / "results.parquet"
        path.write_bytes(r.content)
        r = await client.get(f"/jobs/{job['id']}/results", params={"format": "xml"})
        assert r.status_code == 422

    schema = pq.read_schema(path)
    assert pa.types.is_list(schema.field("tags").type)
    assert pa.types.is_struct(schema.field("metadata").type) and pa.types.is_struct(schema.field("error").type)
    df = pd.read_parquet(path)
    assert list(df["tags"][3]) == ["x", "3"] and df["error"][4]["type"] == "llm_error"
    # datasets, in a child process that cannot reach the Hub
    code = ("import datasets, json, sys; d = datasets.load_dataset('parquet', data_files=sys.argv[1], split='train');"
            "print(json.dumps({'n': len(d), 'row': d[3]['generation'], 'tags': d[3]['tags'],"
            " 'usage': d[3]['metadata']['usage'], 'error': d[4]['error']['type']}))")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["n"] == 25 and got["row"] == "Echo: row 3" and got["tags"] == ["x", "3"]
    assert got["usage"]["output_tokens"] == 3 and got["error"] == "llm_error"


def test_the_cli_starts_without_pyarrow_pydantic_the_tasks_or_fastapi():
    """`synthserve run --server` into JSONL needs none of them (bench/cli_throughput counts the
    CLI's start): pyarrow loads for CSV and Parquet, the task registry and pydantic on a resume
    or in process, FastAPI in the server."""
    code = ("import sys, app.cli; "
            "print(sorted(m for m in ('pyarrow', 'pandas', 'pydantic', 'tasks', 'fastapi') if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"
