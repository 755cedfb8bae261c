"""The README's first run, on the real embedded model: `synthserve serve` with the local
backend says when the model starts loading and when it is ready, and `synthserve run`
against it finishes (max_new_tokens given, as the README's examples do)."""

from __future__ import annotations

import json
import os

from tests.jobs.conftest import RedisServer
from tests.ops.conftest import Process, wait_healthy
from tests.service import free_port

from .conftest import read_jsonl, synthserve, write_jsonl


def test_serve_logs_the_model_load_and_run_finishes(tmp_path):
    redis = RedisServer(tmp_path)
    config = tmp_path / "local.toml"
    config.write_text('[backends.local]\nprovider = "local"\ndevice = "cpu"\nmax_concurrency = 4\n'
                      f'[jobs]\nredis_url = "{redis.url}"\nconsume = true\n')
    port = free_port()
    server = Process(["serve", "--config", str(config), "--port", str(port), "--log-format", "text"],
                     tmp_path / "serve.log", {**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        url = f"http://127.0.0.1:{port}"
        wait_healthy(url, server, timeout_s=180)
        logs = server.logs()
        loading, ready = logs.find("loading model SmolLM2-135M-Instruct (embedded) on cpu"), logs.find("ready on cpu")
        assert 0 <= loading < ready < logs.find("Application startup complete"), logs

        src = write_jsonl(tmp_path / "in.jsonl", [{"instruction": "Name a colour."}, {"instruction": "Say hello."}])
        out = tmp_path / "out.jsonl"
        r = synthserve("run", "text-generation", "-i", str(src), "-o", str(out), "--server", url,
                       "--max-new-tokens", "16", timeout=300)
        assert r.returncode == 0, r.stdout + r.stderr
        rows = read_jsonl(out)
        assert len(rows) == 2 and all(row["generation"] and row["error"] is None for row in rows)
        assert all(0 < row["metadata"]["usage"]["output_tokens"] <= 16 for row in rows), json.dumps(rows)
    finally:
        server.close()
        redis.close()
