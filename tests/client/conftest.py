"""Fixtures for the client tests: a real `synthserve serve` process and a worker process
on a redis-server of the tests' own (never the system one), both pointing at the mock LLM;
and `synthserve ...` run as a child process, plain or in a pseudo-terminal."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.jobs.conftest import RedisServer, WorkerProcess, jobs_settings, settings_toml
from tests.ops.conftest import Process, wait_healthy
from tests.service import free_port


@dataclass
class Service:
    url: str
    config: Path
    server: Process
    worker: WorkerProcess


@pytest.fixture(scope="module")
def service(mock_llm, tmp_path_factory) -> Iterator[Service]:
    """Server + worker on one Redis, max_concurrency 4, one row attempt (a failing row
    fails at once)."""
    directory = tmp_path_factory.mktemp("service")
    redis = RedisServer(directory)
    settings = jobs_settings(mock_llm.url, redis.url, max_concurrency=4, max_row_attempts=1)
    settings.backends["mock"].max_retries = 0
    config = directory / "synthserve.toml"
    config.write_text(settings_toml(settings))
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    port = free_port()
    server = Process(["serve", "--config", str(config), "--port", str(port)], directory / "serve.log", env)
    worker = WorkerProcess(config, directory / "worker.log")
    try:
        url = f"http://127.0.0.1:{port}"
        wait_healthy(url, server)
        worker.wait_ready()
        yield Service(url, config, server, worker)
    finally:
        server.close()
        worker.close()
        redis.close()


@pytest.fixture
def mock_config(mock, tmp_path) -> Path:
    """A config for in-process runs: one backend, the mock; no Redis."""
    path = tmp_path / "inprocess.toml"
    path.write_text(f'[backends.mock]\nprovider = "openai"\nbase_url = "{mock.url}/v1"\nmodel = "mock-model"\n'
                    'max_concurrency = 4\nmax_retries = 0\n')
    return path


def synthserve(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """`synthserve ARGS` with stdout a pipe (so: plain progress lines)."""
    return subprocess.run([sys.executable, "-m", "app.cli", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "PYTHONUNBUFFERED": "1"})


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def read_jsonl(path: Path) -> list[dict]:
    # split at LF only: splitlines would also cut at U+2028 and others, raw in the JSON text
    return [json.loads(line) for line in path.read_text(encoding="utf-8").split("\n") if line]
