"""The output file of `synthserve run` (app.client.output.OutputFile) on its own: a JSONL
output is the journal's lines in order (not encoded twice), byte for byte what
formats.write_rows writes for the same rows, with the rows of a previous run merged in."""

from __future__ import annotations

import json
import random

import pyarrow.parquet as pq
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


def fresh_run(tmp_path, keyed_rows) -> tuple[OutputFile, bytes]:
    """`keyed_rows` through a fresh OutputFile into out.parquet; and the bytes formats.write_rows
    writes for the same final rows."""
    out = OutputFile(tmp_path / "out.parquet")
    out.start({"job": "job_1", "units": None, "per_unit": None, "skipped": 0})
    final = {}
    for key, r in keyed_rows:
        out.add(key, r)
        final[key] = {**r, "index": key}
    out.finish()
    reference = tmp_path / "reference.parquet"
    formats.write_rows(reference, [final[k] for k in sorted(final)])
    return out, reference.read_bytes()


def near_order(n: int, seed: int = 3) -> list[int]:
    """0..n-1 as rows come from 64 in flight: roughly in order, never far."""
    rng = random.Random(seed)
    return [i for _, i in sorted((i + rng.uniform(0, 64), i) for i in range(n))]


def test_a_fresh_parquet_output_is_written_a_row_group_at_a_time_as_rows_come(tmp_path):
    n = formats.BATCH * 2 + 500
    out = OutputFile(tmp_path / "out.parquet")
    out.start({"job": "job_1", "units": None, "per_unit": None, "skipped": 0})
    order = near_order(n)
    first_full = max(k for k, i in enumerate(order) if i < formats.BATCH)  # the last row of batch 0 comes here
    for k, i in enumerate(order):
        out.add(i, row(i, f"text {i}"))
        if k == first_full - 1:
            assert not (tmp_path / "out.parquet.tmp").exists()
        if k == first_full:  # batch 0 is whole: its row group is written
            assert (tmp_path / "out.parquet.tmp").exists()
    out.finish()
    reference = tmp_path / "reference.parquet"
    formats.write_rows(reference, [{**row(i, f"text {i}"), "index": i} for i in range(n)])
    assert (tmp_path / "out.parquet").read_bytes() == reference.read_bytes()
    assert pq.ParquetFile(tmp_path / "out.parquet").metadata.num_row_groups == 3
    assert not (tmp_path / "out.parquet.tmp").exists()


def test_a_later_error_a_row_twice_or_a_gap_give_the_same_file_as_writing_it_whole(tmp_path):
    n = formats.BATCH * 2 + 10
    # a type first seen in a later batch: `error` null, then a string (the schema written ahead changes)
    keyed = [(i, {**row(i, "t"), "error": "HTTP 400" if i in (n - 3, 1200) else None}) for i in near_order(n)]
    out, reference = fresh_run(tmp_path, keyed)
    assert out.path.read_bytes() == reference
    # values that stop sharing a type (text, then a list): the column turns JSON text, same schema
    keyed = [(i, row(i, ["a", "list"] if i == 1200 else "text")) for i in near_order(n)]
    out, reference = fresh_run(tmp_path, keyed)
    assert out.path.read_bytes() == reference
    assert pq.read_table(out.path).column("generation")[0].as_py() == '"text"'
    # a row sent again (a job run again), after its batch was written
    keyed = [(i, row(i, "t")) for i in near_order(n)] + [(5, row(5, "again"))]
    out, reference = fresh_run(tmp_path, keyed)
    assert out.path.read_bytes() == reference
    assert pq.read_table(out.path).column("generation")[5].as_py() == "again"
    # rows missing (an interrupted run): not 0..N-1
    keyed = [(i, row(i, "t")) for i in near_order(n) if i != 1500]
    out, reference = fresh_run(tmp_path, keyed)
    assert out.path.read_bytes() == reference
    assert not (tmp_path / "out.parquet.tmp").exists()


def test_ctrl_c_just_after_a_row_group_is_written_never_writes_it_twice(tmp_path, monkeypatch):
    n = formats.BATCH * 3
    out = OutputFile(tmp_path / "out.parquet")
    out.start({"job": "job_1", "units": None, "per_unit": None, "skipped": 0})
    write = pq.ParquetWriter.write_table
    calls = []

    def interrupted_after_the_second(self, table, *args, **kwargs):
        write(self, table, *args, **kwargs)
        calls.append(table.num_rows)
        if len(calls) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(pq.ParquetWriter, "write_table", interrupted_after_the_second)
    with pytest.raises(KeyboardInterrupt):
        for i in range(n):
            out.add(i, row(i, "t"))
    for i in range(2 * formats.BATCH, n):  # the rest, new rows (as a reattach would bring them)
        out.add(i, row(i, "t"))
    monkeypatch.setattr(pq.ParquetWriter, "write_table", write)
    out.finish(detached=True)
    reference = tmp_path / "reference.parquet"
    formats.write_rows(reference, [{**row(i, "t"), "index": i} for i in range(n)])
    assert out.path.read_bytes() == reference.read_bytes()
