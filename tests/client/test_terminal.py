"""`synthserve run` in a real pseudo-terminal: the live bar, Ctrl-C detaching from a job
(which keeps running) and reattaching with --job; Ctrl-C in process keeping the finished
rows, and the rerun doing only the rest."""

from __future__ import annotations

import os
import sys

import httpx
import pandas as pd
import pexpect

from tests.conftest import ROOT

from .conftest import read_jsonl, write_jsonl


E = r"\x1b\[[0-9;]*m"
A = rf"(?:{E})*"  # rich's colours between the parts of the bar
BAR = rf"━(?:[━╸╺ ]|{E})*"


def spawn(*args: str) -> pexpect.spawn:
    return pexpect.spawn(sys.executable, ["-m", "app.cli", *args], cwd=str(ROOT), timeout=60,
                         env={**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "160", "TERM": "xterm"},
                         dimensions=(40, 160), encoding="utf-8")


def rows(n: int) -> list[dict]:
    return [{"instruction": f"row {i}"} for i in range(n)]


def finish(child: pexpect.spawn) -> int:
    child.expect(pexpect.EOF)
    child.close()
    return child.exitstatus if child.exitstatus is not None else 128 + child.signalstatus


def test_live_bar_then_detach_and_reattach(service, mock, tmp_path):
    mock.configure(latency_ms=150)  # 40 rows at 4 in flight: ~1.5 s, time to see the bar move
    src = write_jsonl(tmp_path / "in.jsonl", rows(40))
    out = tmp_path / "out.jsonl"
    child = spawn("run", "text-generation", "-i", str(src), "-o", str(out), "--server", service.url)
    child.expect(r"job (job_\w+) submitted")
    job_id = child.match.group(1)
    # the bar: the job id, a bar drawn with box characters, counts, the rate and the ETA
    child.expect(rf"job_\w+{A} {A}{BAR}\d+%{A} {A} *(\d+)/40{A} \d+ failed · \d+ tokens(?: · \$[\d.]+)? · [\d.]+ rows/s · ETA")
    assert int(child.match.group(1)) < 40
    child.sendintr()  # Ctrl-C
    child.expect("keeps running on the server")
    child.expect(f"synthserve run --job {job_id} --output {out}")
    assert finish(child) == 130
    job = httpx.get(f"{service.url}/jobs/{job_id}").json()
    assert job["status"] in ("queued", "running")  # Ctrl-C left it alone

    mock.configure(latency_ms=0)
    child = spawn("run", "--job", job_id, "--output", str(out), "--server", service.url)
    child.expect(rf"100%{A} {A}40/40")
    child.expect("wrote 40 rows")
    assert finish(child) == 0
    got = read_jsonl(out)
    assert [r["index"] for r in got] == list(range(40))
    assert all(r["generation"] == f"Echo: row {r['index']}" for r in got)
    assert not (tmp_path / "out.jsonl.partial").exists()


def test_ctrl_c_in_process_keeps_rows_and_the_rerun_does_the_rest(mock, mock_config, tmp_path):
    mock.configure(latency_ms=100)
    src = write_jsonl(tmp_path / "in.jsonl", rows(60))
    out = tmp_path / "out.parquet"
    child = spawn("run", "text-generation", "-i", str(src), "-o", str(out), "--config", str(mock_config))
    child.expect(rf"text-generation{A} {A}{BAR}\d+%{A} {A} *([1-9]\d*)/60{A} ")
    child.sendintr()
    child.expect("run the same command again to resume")
    assert finish(child) == 130
    kept = pd.read_parquet(out)
    assert 0 < len(kept) < 60 and kept["error"].isna().all()
    before = mock.stats()["requests"]

    mock.configure(latency_ms=0)
    child = spawn("run", "text-generation", "-i", str(src), "-o", str(out), "--config", str(mock_config))
    child.expect(f"resuming: {len(kept)} of 60 rows")
    child.expect("wrote 60 rows")
    assert finish(child) == 0
    assert mock.stats()["requests"] - before == 60 - len(kept)
    df = pd.read_parquet(out)
    assert list(df["index"]) == list(range(60))
    assert list(df["generation"]) == [f"Echo: row {i}" for i in range(60)]
