"""Helpers for the operations tests: reading /metrics, and running `synthserve` as a real
process (for signals and the logs the CLI configures)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.jobs.conftest import rds, redis_server, workers  # noqa: F401  (the jobs' real redis-server)
from tests.service import free_port

ROOT = Path(__file__).resolve().parents[2]


def samples(text: str) -> dict[tuple[str, frozenset], float]:
    """`{(sample name, frozenset(labels.items())): value}` from a Prometheus exposition."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(text_or_samples, name: str, **labels: str) -> float:
    table = samples(text_or_samples) if isinstance(text_or_samples, str) else text_or_samples
    return table.get((name, frozenset(labels.items())), 0.0)


def write_config(path: Path, mock_url: str, *, keys_env: str = "SYNTHSERVE_API_KEYS",
                 extra: str = "") -> Path:
    path.write_text(f"""
[server]
api_keys_env = "{keys_env}"

[backends.mock]
provider = "openai"
base_url = "{mock_url}/v1"
model = "mock-model"
max_concurrency = 8
max_retries = 1
timeout_s = 60
{extra}
""")
    return path


class Process:
    """A `synthserve ...` child process whose stderr (the logs) goes to a file."""

    def __init__(self, args: list[str], log_path: Path, env: dict[str, str]):
        self.log_path = log_path
        self._log = open(log_path, "w")
        self.proc = subprocess.Popen([sys.executable, "-m", "app.cli", *args], cwd=ROOT, env=env,
                                     stdout=self._log, stderr=subprocess.STDOUT)

    def logs(self) -> str:
        self._log.flush()
        return self.log_path.read_text()

    def terminate(self) -> None:
        self.proc.send_signal(signal.SIGTERM)

    def wait(self, timeout: float) -> int:
        return self.proc.wait(timeout)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._log.close()


def wait_healthy(url: str, proc: Process, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.proc.poll() is not None:
            raise RuntimeError(f"exited with {proc.proc.returncode}:\n{proc.logs()}")
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{url} not healthy after {timeout_s}s:\n{proc.logs()}")


@pytest.fixture
def cli_server(tmp_path) -> Iterator:
    """`start(config_path, env={...}, *args)` runs `synthserve serve` on a free port and
    returns (Process, base_url); every process started is killed at the end."""
    started: list[Process] = []

    def start(config: Path, env: dict[str, str] | None = None, *args: str) -> tuple[Process, str]:
        port = free_port()
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        proc = Process(["serve", "--config", str(config), "--port", str(port), *args],
                       tmp_path / f"serve-{port}.log", full_env)
        started.append(proc)
        url = f"http://127.0.0.1:{port}"
        wait_healthy(url, proc)
        return proc, url

    yield start
    for proc in started:
        proc.close()
