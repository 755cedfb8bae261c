"""Fixtures for the jobs tests: a real redis-server on a free port (never the system one),
workers as real subprocesses (`python -m app.cli worker --config FILE`, so that a test can
kill -9 them), and helpers that read the job API."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from app.config import JobsConfig, Settings
from tests.conftest import ROOT
from tests.service import free_port, fresh_data_dir, mock_settings

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


class RedisServer:
    def __init__(self, directory: Path):
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.directory = directory
        self.client = redis.Redis.from_url(self.url, decode_responses=True)
        self.start()

    def start(self) -> None:
        """(Again, after stop(): the same port, an empty Redis.)"""
        self.proc = subprocess.Popen(
            [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.directory),
             "--save", "", "--appendonly", "no", "--logfile", str(self.directory / "redis.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while True:
            try:
                self.client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError("redis-server did not start") from None
                time.sleep(0.05)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def close(self) -> None:
        self.client.close()
        self.stop()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def rds(redis_server: RedisServer) -> redis.Redis:
    """A clean Redis for this test (sync client)."""
    redis_server.client.flushall()
    return redis_server.client


def jobs_settings(mock_url: str, redis_url: str | None, *, max_concurrency: int = 8,
                  **jobs: Any) -> Settings:
    jobs.setdefault("claim_idle_ms", 1000)
    if redis_url is None:  # the default set-up: a private Redis, here of this app's own
        jobs.setdefault("data_dir", fresh_data_dir())
    return mock_settings(mock_url, max_concurrency=max_concurrency,
                         jobs=JobsConfig(redis_url=redis_url, **jobs))


def settings_toml(settings: Settings) -> str:
    lines = []
    for name, b in settings.backends.items():
        lines.append(f"[backends.{name}]")
        for key, value in b.model_dump(exclude_none=True).items():
            lines.append(f"{key} = {json.dumps(value)}")
    lines.append("[jobs]")
    for key, value in settings.jobs.model_dump(exclude_none=True).items():
        lines.append(f"{key} = {json.dumps(value)}")
    return "\n".join(lines) + "\n"


class WorkerProcess:
    def __init__(self, config: Path, log: Path):
        self.log = log
        self._log_file = log.open("w")
        self.proc = subprocess.Popen([sys.executable, "-m", "app.cli", "worker", "--config", str(config)],
                                     cwd=ROOT, stdout=self._log_file, stderr=subprocess.STDOUT,
                                     env={**os.environ, "PYTHONUNBUFFERED": "1"})

    def wait_ready(self, timeout: float = 30) -> WorkerProcess:
        deadline = time.monotonic() + timeout
        while "consuming" not in self.log.read_text():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"worker did not start:\n{self.log.read_text()}")
            time.sleep(0.05)
        return self

    def kill(self) -> None:
        """kill -9: no cleanup at all."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def terminate(self, timeout: float = 30) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._log_file.close()


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[Callable[[Settings], WorkerProcess]]:
    """`workers(settings)` starts a worker process on these settings and waits until it reads."""
    started: list[WorkerProcess] = []

    def start(settings: Settings) -> WorkerProcess:
        config = tmp_path / f"worker{len(started)}.toml"
        config.write_text(settings_toml(settings))
        worker = WorkerProcess(config, tmp_path / f"worker{len(started)}.log")
        started.append(worker)
        return worker.wait_ready()

    yield start
    for w in started:
        w.close()


# ---- reading the API ----

async def wait_for(predicate: Callable[[], Any], timeout: float = 30, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = await predicate() if asyncio.iscoroutinefunction(predicate) else predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {predicate}")
        await asyncio.sleep(interval)


async def get_job(client: httpx.AsyncClient, job_id: str, **kw) -> dict:
    r = await client.get(f"/jobs/{job_id}", **kw)
    assert r.status_code == 200, r.text
    return r.json()


async def wait_job(client: httpx.AsyncClient, job_id: str, *, statuses=("completed",), timeout: float = 60,
                   until: Callable[[dict], bool] | None = None, **kw) -> dict:
    async def check():
        job = await get_job(client, job_id, **kw)
        if until is not None:
            return job if until(job) else None
        return job if job["status"] in statuses else None
    return await wait_for(check, timeout=timeout, interval=0.1)


async def results(client: httpx.AsyncClient, job_id: str, **kw) -> list[dict]:
    r = await client.get(f"/jobs/{job_id}/results", **kw)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/x-ndjson")
    return [json.loads(line) for line in r.text.splitlines() if line]


async def read_events(client: httpx.AsyncClient, job_id: str, *, last_event_id: str | None = None,
                      stop_after: int | None = None, timeout: float = 60, **kw) -> list[dict]:
    """SSE events as {"event", "id", "data"}; stops at `done`, or after `stop_after` events."""
    headers = dict(kw.pop("headers", {}))
    if last_event_id is not None:
        headers["Last-Event-ID"] = last_event_id
    events: list[dict] = []
    async with asyncio.timeout(timeout):
        async with client.stream("GET", f"/jobs/{job_id}/events", headers=headers, **kw) as r:
            assert r.status_code == 200, await r.aread()
            assert r.headers["content-type"].startswith("text/event-stream")
            current: dict = {}
            async for line in r.aiter_lines():
                if line.startswith(":"):
                    continue
                if not line:
                    if current:
                        current["data"] = json.loads(current["data"])
                        events.append(current)
                        current = {}
                        if events[-1]["event"] == "done" or (stop_after and len(events) >= stop_after):
                            break
                    continue
                name, _, value = line.partition(":")
                current[name] = value[1:] if value.startswith(" ") else value
    return events


def text_rows(n: int, prefix: str = "row") -> list[dict]:
    return [{"instruction": f"{prefix} {i}"} for i in range(n)]
