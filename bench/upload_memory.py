"""A large JSONL file through `POST /jobs` multipart: the server's peak RSS growth.

    python bench/upload_memory.py [--mb 200] [--row-bytes 1000]

Starts its own redis-server (temporary, free port) and `synthserve serve` on it (with no
worker consuming: the job stays queued, so only the upload is measured), writes a JSONL
file of about --mb megabytes, uploads it with httpx (streamed from the file), and samples
the server process's resident memory every 20 ms from before the upload until the 202.
The goal: growth <= 100 MB for 200 MB (the file is spooled to disk and read back a
thousand rows at a time, never held whole). Also printed: the upload's MB/s.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from tests.jobs.conftest import RedisServer  # noqa: E402
from tests.ops.conftest import Process, wait_healthy  # noqa: E402
from tests.service import free_port  # noqa: E402


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mb", type=int, default=200)
    parser.add_argument("--row-bytes", type=int, default=1000)
    args = parser.parse_args()
    rows = args.mb * 1_000_000 // args.row_bytes

    with tempfile.TemporaryDirectory(prefix="upload-bench-") as tmp:
        tmp = Path(tmp)
        redis = RedisServer(tmp)
        config = tmp / "bench.toml"
        config.write_text(f'[server]\nmax_body_bytes = {(args.mb + 50) * 1_000_000}\nmax_rows_per_request = {rows}\nmax_output_rows_per_request = {rows}\n'
                          '[backends.mock]\nprovider = "openai"\nbase_url = "http://127.0.0.1:9/v1"\n'
                          f'model = "mock-model"\n[jobs]\nredis_url = "{redis.url}"\nconsume = false\n')
        src = tmp / "rows.jsonl"
        filler = "x" * (args.row_bytes - 40)
        with src.open("w") as f:
            for i in range(rows):
                f.write(json.dumps({"instruction": f"{i} {filler}"}) + "\n")
        size = src.stat().st_size
        port = free_port()
        server = Process(["serve", "--config", str(config), "--port", str(port)], tmp / "serve.log",
                         {**os.environ, "PYTHONUNBUFFERED": "1"})
        try:
            url = f"http://127.0.0.1:{port}"
            wait_healthy(url, server)
            pid = server.proc.pid
            base = peak = rss_bytes(pid)
            done = threading.Event()

            def sample() -> None:
                nonlocal peak
                while not done.is_set():
                    peak = max(peak, rss_bytes(pid))
                    time.sleep(0.02)

            sampler = threading.Thread(target=sample)
            sampler.start()
            start = time.perf_counter()
            with src.open("rb") as f:
                r = httpx.post(f"{url}/jobs", files={"file": ("rows.jsonl", f)},
                               data={"job": json.dumps({"task": "text-generation"})}, timeout=600)
            wall = time.perf_counter() - start
            done.set()
            sampler.join()
            if r.status_code != 202:
                raise SystemExit(f"{r.status_code}: {r.text[:500]}")
            job = r.json()
            assert job["progress"]["total"] == rows, job
            growth = (peak - base) / 1e6
            print(f"{size / 1e6:.0f} MB, {rows} rows uploaded in {wall:.1f} s ({size / 1e6 / wall:.1f} MB/s); "
                  f"server RSS {base / 1e6:.0f} MB before, peak {peak / 1e6:.0f} MB: growth {growth:.0f} MB "
                  f"(goal <= 100 MB)", flush=True)
        finally:
            server.close()
            redis.close()


if __name__ == "__main__":
    main()
