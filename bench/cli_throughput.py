"""`synthserve run` against a server: a 5,000-row JSONL file through a job, to JSONL and
to Parquet.

    python bench/cli_throughput.py [--rows 5000] [--latency-ms 100] [--concurrency 64]

Starts its own mock LLM server, redis-server (temporary, free port) and `synthserve serve`
(consuming its jobs itself), then times `synthserve run text-generation --input in.jsonl
--output out.EXT --server URL` as a child process, from its start to its exit: reading
the file, submitting, following the events with the progress display (plain lines: stdout
is a pipe), writing the output. The limit is concurrency / latency rows per second (640/s
at 64 in flight and 100 ms); the goal is a ratio >= 0.85 for both outputs. Also printed:
the job's own rate (started_at..finished_at), so what the client and the files cost is
the difference, and the two ends of it: from the CLI's start to the job's created_at
(start-up, reading, the upload, the server's check of the file) and from its finished_at
to the CLI's exit (the last events, writing the output, exit). The runs skip the LLM-call
cache (--no-cache): every call reaches the mock.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from tests.conftest import start_mock_llm  # noqa: E402
from tests.jobs.conftest import RedisServer  # noqa: E402
from tests.ops.conftest import Process, wait_healthy  # noqa: E402
from tests.service import free_port  # noqa: E402


def parse_time(stamp: str) -> datetime:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00"))


def one_run(url: str, src: Path, out: Path, rows: int, limit: float) -> dict:
    started, start = time.time(), time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "app.cli", "run", "text-generation", "--input", str(src),
                        "--output", str(out), "--server", url, "--no-raw", "--no-cache"],
                       cwd=ROOT, capture_output=True, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    wall = time.perf_counter() - start
    if r.returncode != 0:
        raise SystemExit(f"synthserve run exited {r.returncode}:\n{r.stdout}\n{r.stderr}")
    job_id = next(w for w in r.stdout.split() if w.startswith("job_"))
    job = httpx.get(f"{url}/jobs/{job_id}").json()
    working = (parse_time(job["finished_at"]) - parse_time(job["started_at"])).total_seconds()
    assert job["progress"]["completed"] == rows, job
    return {"rows_per_s": rows / wall, "ratio": rows / wall / limit, "wall_s": wall,
            "job_rows_per_s": rows / working, "job_ratio": rows / working / limit,
            "before_s": parse_time(job["created_at"]).timestamp() - started,
            "after_s": started + wall - parse_time(job["finished_at"]).timestamp()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=5000)
    parser.add_argument("--latency-ms", type=float, default=100)
    parser.add_argument("--concurrency", type=int, default=64)
    args = parser.parse_args()
    limit = args.concurrency / (args.latency_ms / 1000)

    mock = start_mock_llm()
    with tempfile.TemporaryDirectory(prefix="cli-bench-") as tmp:
        tmp = Path(tmp)
        redis = RedisServer(tmp)
        config = tmp / "bench.toml"
        config.write_text(f'[backends.mock]\nprovider = "openai"\nbase_url = "{mock.url}/v1"\nmodel = "mock-model"\n'
                          f'max_concurrency = {args.concurrency}\n[jobs]\nredis_url = "{redis.url}"\nconsume = true\n')
        port = free_port()
        server = Process(["serve", "--config", str(config), "--port", str(port)], tmp / "serve.log",
                         {**os.environ, "PYTHONUNBUFFERED": "1"})
        try:
            url = f"http://127.0.0.1:{port}"
            wait_healthy(url, server)
            mock.configure(latency_ms=args.latency_ms)
            for ext in ("jsonl", "parquet"):
                src = tmp / f"in-{ext}.jsonl"
                src.write_text("".join(json.dumps({"instruction": f"Write a haiku about the number {i}."}) + "\n"
                                       for i in range(args.rows)))
                run = one_run(url, src, tmp / f"out.{ext}", args.rows, limit)
                print(f"--output x.{ext:<7}: {run['rows_per_s']:6.1f} rows/s  limit {limit:.0f}/s  ratio {run['ratio']:.3f}"
                      f" (goal >= 0.85; {run['wall_s']:.2f} s from the CLI's start to its exit);"
                      f" the job alone: {run['job_rows_per_s']:.1f} rows/s, ratio {run['job_ratio']:.3f};"
                      f" CLI start to job created {run['before_s']:.2f} s, job finished to CLI exit {run['after_s']:.2f} s",
                      flush=True)
        finally:
            server.close()
            redis.close()
            mock.close()


if __name__ == "__main__":
    main()
