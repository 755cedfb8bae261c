"""`python -m sidecar` / `synthserve sidecar` as a process: its options reach the engine."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from app.cli import build_parser
from tests.service import free_port

ROOT = Path(__file__).resolve().parents[2]


def test_synthserve_sidecar_takes_tgi_batch_options():
    args = build_parser().parse_args(["sidecar", "--device", "cpu", "--max-batch-size", "4",
                                      "--max-concurrent-requests", "9", "--max-batch-total-tokens", "2048"])
    assert (args.device, args.max_batch_size, args.max_concurrent_requests, args.max_batch_total_tokens) == \
        ("cpu", 4, 9, 2048)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["sidecar", "--max-batch-size", "0"])


def test_the_sidecar_process_applies_its_options(engine):  # engine: the converted model is cached
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "sidecar", "--port", str(port), "--device", "cpu",
                             "--max-batch-size", "3", "--max-concurrent-requests", "5",
                             "--max-batch-total-tokens", "3000"],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, proc.stderr.read()
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "the sidecar did not become healthy"
            time.sleep(0.2)
        info = httpx.get(f"http://127.0.0.1:{port}/info", timeout=5).json()
        assert (info["max_batch_size"], info["max_concurrent_requests"], info["max_batch_total_tokens"],
                info["max_total_tokens"]) == (3, 5, 3000, 3000)
        answer = httpx.post(f"http://127.0.0.1:{port}/generate", timeout=60,
                            json={"inputs": "Hello", "parameters": {"max_new_tokens": 3000}})
        assert answer.status_code == 422 and "3000" in answer.json()["error"]
    finally:
        proc.terminate()
        proc.wait(timeout=30)
