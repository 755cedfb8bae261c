"""An OpenAI batch through the served Batch API: a --lines (10,000) line file over the
mock LLM, with the real `openai` SDK.

    python bench/batch_throughput.py [--lines 10000] [--latency-ms 100] [--concurrency 64]

Starts its own mock, redis-server (temporary, free port) and `synthserve serve` (running
its jobs itself), uploads the file (client.files.create), creates the batch and polls it
until it completes, then downloads the output file. The limit is concurrency / latency
lines per second (640/s at 64 in flight and 100 ms); the goal is a ratio >= 0.85, timed
from batches.create to `completed`. Every line has its own prompt (no cache hits).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from openai import OpenAI  # noqa: E402

from tests.conftest import start_mock_llm  # noqa: E402
from tests.jobs.conftest import RedisServer  # noqa: E402
from tests.ops.conftest import Process, wait_healthy  # noqa: E402
from tests.service import free_port  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lines", type=int, default=10_000)
    parser.add_argument("--latency-ms", type=float, default=100)
    parser.add_argument("--concurrency", type=int, default=64)
    args = parser.parse_args()
    limit = args.concurrency / (args.latency_ms / 1000)

    mock = start_mock_llm()
    with tempfile.TemporaryDirectory(prefix="batch-bench-") as tmp:
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
            lines = "".join(json.dumps({"custom_id": f"line-{i}", "method": "POST", "url": "/v1/chat/completions",
                                        "body": {"model": "mock", "max_tokens": 32, "messages": [
                                            {"role": "user", "content": f"Write a haiku about the number {i}."}]}})
                            + "\n" for i in range(args.lines))
            client = OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=120)
            uploaded = client.files.create(file=("batch.jsonl", lines.encode()), purpose="batch")
            start = time.perf_counter()
            batch = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                                          completion_window="24h")
            created = time.perf_counter() - start
            while batch.status not in ("completed", "failed", "cancelled"):
                time.sleep(0.1)
                batch = client.batches.retrieve(batch.id)
            wall = time.perf_counter() - start
            counts = batch.request_counts
            out = client.files.content(batch.output_file_id).text.splitlines()
            assert batch.status == "completed" and counts.completed == args.lines == len(out), batch
            print(f"{args.lines} lines: {args.lines / wall:.1f} lines/s  limit {limit:.0f}/s  "
                  f"ratio {args.lines / wall / limit:.3f} (goal >= 0.85; {wall:.2f} s from batches.create to "
                  f"completed, of which create {created:.2f} s)", flush=True)
        finally:
            server.close()
            redis.close()
            mock.close()


if __name__ == "__main__":
    main()
