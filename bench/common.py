"""What the benchmarks share: start the mock LLM server and the service as their own
processes (so neither steals the other's event loop), and wait for them."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.conftest import start_mock_llm  # noqa: E402
from tests.service import free_port  # noqa: E402


@contextlib.contextmanager
def mock_llm(latency_ms: float) -> Iterator:
    server = start_mock_llm("--latency-ms", str(latency_ms))
    try:
        yield server
    finally:
        server.close()


def wait_http(url: str, proc: subprocess.Popen, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args} exited with {proc.returncode}")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise TimeoutError(url)


@contextlib.contextmanager
def service(config_toml: str, *, command: str = "serve") -> Iterator[str]:
    """`synthserve serve --config <toml>` on a free port; yields its base URL."""
    with tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False) as f:
        f.write(config_toml)
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "app.cli", command, "--config", f.name,
                             "--port", str(port), "--log-level", "warning"], cwd=ROOT,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(url + "/health", proc)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        os.unlink(f.name)


def backend_toml(mock_url: str, max_concurrency: int, provider: str = "openai") -> str:
    base = mock_url + "/v1" if provider == "openai" else mock_url
    return f"""
[backends.mock]
provider = "{provider}"
base_url = "{base}"
model = "mock-model"
max_concurrency = {max_concurrency}
max_retries = 0
timeout_s = 60
"""
