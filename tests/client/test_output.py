"""The output file of `synthserve run` (app.client.output.OutputFile) on its own: a JSONL
output is the journal's lines in order (not encoded twice), byte for byte what
formats.write_rows writes for the same rows, with the rows of a previous run merged in."""

from __future__ import annotations

import json

import pytest

from app import formats
from app.client.output import OutputFile


def row(i: int, text: str) -> dict:
    return {"index": 99, "instruction": f"i{i}", "generation": text, "metadata": {"n": [i, None]}, "error": None}


@pytest.mark.parametrize("ext", ["jsonl", "csv", "parquet"])
def test_rows_out_of_order_and_a_previous_run_make_the_sorted_output(tmp_path, ext):
    path = tmp_path / f"out.{ext}"
    formats.write_rows(path, [{**row(i, "old"), "index": i} for i in (0, 3)])
    out = OutputFile(path)
    out.load()
    out.start({"job": "job_1", "units": None, "per_unit": None, "skipped": 2})
    for i, text in ((5, "a\u2028b"), (1, "é 日本"), (3, "new"), (2, "x\ny"), (4, "")):
        out.add(i, row(i, text))  # the row's own `index` gives way to its place
    out.finish()
    expected = [{**row(0, "old"), "index": 0}] + [{**row(i, t), "index": i} for i, t in
                                                  ((1, "é 日本"), (2, "x\ny"), (3, "new"), (4, ""), (5, "a\u2028b"))]
    reference = tmp_path / f"reference.{ext}"
    formats.write_rows(reference, expected)
    assert path.read_bytes() == reference.read_bytes()
    assert not out.journal_path.exists()


def test_a_detached_finish_keeps_the_job_header_and_a_rerun_reads_the_rows(tmp_path):
    path = tmp_path / "out.jsonl"
    out = OutputFile(path)
    out.start({"job": "job_1", "units": None, "per_unit": None, "skipped": 0})
    out.add(1, row(1, "b"))
    out.add(0, row(0, "a"))
    out.finish(detached=True)
    assert [json.loads(line)["index"] for line in path.read_text(encoding="utf-8").splitlines()] == [0, 1]
    assert json.loads(out.journal_path.read_text()) == {"job": "job_1", "units": None, "per_unit": None, "skipped": 0}
    again = OutputFile(path)
    again.load()
    assert again.header["job"] == "job_1" and sorted(again.rows) == [0, 1]
