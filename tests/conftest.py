from __future__ import annotations

import os
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import httpx
import pytest

ROOT = Path(__file__).resolve().parent.parent
DATA_DIR_ENV = "SYNTHSERVE_DATA_DIR"  # (app.config.DATA_DIR_ENV: not imported before the env is set)


# ---------------------------------------------------------------------------
# The private Redis. An app built with default settings (no [jobs] redis_url) runs a
# private redis-server under [jobs] data_dir: in tests, a temporary directory of this
# session (short: a unix socket path has at most 107 bytes), never the repository's.
# ---------------------------------------------------------------------------

def pytest_configure(config: pytest.Config) -> None:
    root = tempfile.mkdtemp(prefix="synthserve-test-")
    config.stash[_DATA_ROOT] = root
    os.environ[DATA_DIR_ENV] = str(Path(root) / "default")


def pytest_unconfigure(config: pytest.Config) -> None:
    shutil.rmtree(config.stash.get(_DATA_ROOT, ""), ignore_errors=True)


_DATA_ROOT = pytest.StashKey[str]()


@pytest.fixture
def data_dir() -> str:
    """A fresh data_dir for a private Redis of this test's own."""
    from tests.service import fresh_data_dir
    return fresh_data_dir()

# ---------------------------------------------------------------------------
# The mock LLM server (tests/mock_llm.py), one process per test session.
# `mock_llm` is session-scoped and keeps state between tests; `mock` is the same
# object, reset (rules, counters, request log, latency back to 0) before the test.
# ---------------------------------------------------------------------------


class MockLLMServer:
    """Handle on a running `python -m tests.mock_llm`; the control API wrapped (sync and async)."""

    def __init__(self, proc: subprocess.Popen, url: str):
        self.proc = proc
        self.url = url
        self.openai_url = url + "/v1"
        self._http = httpx.Client(base_url=url, timeout=10)

    def script(self, rules: list[dict[str, Any]]) -> None:
        self._http.post("/_mock/script", json=rules).raise_for_status()

    def reset(self) -> None:
        self._http.post("/_mock/reset").raise_for_status()
        self.configure(latency_ms=0, chunk_delay_ms=0)

    def configure(self, **settings: float) -> None:
        self._http.post("/_mock/config", json=settings).raise_for_status()

    def stats(self) -> dict[str, Any]:
        return self._http.get("/_mock/stats").raise_for_status().json()

    def requests(self) -> list[dict[str, Any]]:
        return self._http.get("/_mock/requests").raise_for_status().json()

    async def ascript(self, rules: list[dict[str, Any]]) -> None:
        async with httpx.AsyncClient(base_url=self.url, timeout=10) as http:
            (await http.post("/_mock/script", json=rules)).raise_for_status()

    async def astats(self) -> dict[str, Any]:
        async with httpx.AsyncClient(base_url=self.url, timeout=10) as http:
            return (await http.get("/_mock/stats")).raise_for_status().json()

    async def arequests(self) -> list[dict[str, Any]]:
        async with httpx.AsyncClient(base_url=self.url, timeout=10) as http:
            return (await http.get("/_mock/requests")).raise_for_status().json()

    def close(self) -> None:
        self._http.close()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_mock_llm(*args: str, timeout_s: float = 30.0) -> MockLLMServer:
    """Start the mock on a free port (it binds port 0 and prints its URL) and wait for it."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.mock_llm", "--host", "127.0.0.1", "--port", "0", *args],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=None, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        ready = sel.select(timeout_s)
    line = proc.stdout.readline() if ready else ""
    if "listening on " not in line:
        proc.kill()
        raise RuntimeError(f"mock LLM server did not start (exit code {proc.poll()}): {line!r}")
    return MockLLMServer(proc, line.strip().rsplit(" ", 1)[-1])


@pytest.fixture(scope="session")
def mock_llm():
    server = start_mock_llm()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def mock(mock_llm: MockLLMServer) -> MockLLMServer:
    mock_llm.reset()
    return mock_llm
