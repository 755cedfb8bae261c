"""The default set-up: no [jobs] redis_url, so `synthserve serve` runs a private
redis-server under [jobs] data_dir and runs the jobs itself. Its jobs survive a kill -9
of the server; `synthserve worker` can join it; without redis-server it refuses to start."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from app.jobs.private import PrivateRedisError, private_redis, socket_url
from tests.conftest import ROOT
from tests.ops.conftest import Process, wait_healthy
from tests.service import free_port, serve

from .conftest import get_job, jobs_settings, results, text_rows, wait_for, wait_job


def default_config(path: Path, mock_url: str, data_dir: str) -> Path:
    path.write_text(f"""
[backends.mock]
provider = "openai"
base_url = "{mock_url}/v1"
model = "mock-model"
max_concurrency = 4

[jobs]
data_dir = "{data_dir}"
claim_idle_ms = 1000
""")
    return path


def start_server(config: Path, log: Path) -> tuple[Process, str]:
    port = free_port()
    proc = Process(["serve", "--config", str(config), "--port", str(port)], log,
                   {**os.environ, "PYTHONUNBUFFERED": "1"})
    url = f"http://127.0.0.1:{port}"
    wait_healthy(url, proc)
    return proc, url


async def test_jobs_survive_a_kill_9_of_the_server(mock, tmp_path, data_dir):
    n = 40
    mock.configure(latency_ms=100)
    config = default_config(tmp_path / "default.toml", mock.url, data_dir)
    first, url = start_server(config, tmp_path / "first.log")
    try:
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            job = (await client.post("/jobs", json={"task": "text-generation", "rows": text_rows(n)})).json()
            await wait_job(client, job["id"], until=lambda j: j["progress"]["completed"] >= 4)
        first.proc.kill()  # kill -9: no cleanup; its redis-server child goes with it
        first.proc.wait()
    finally:
        first.close()
    second, url = start_server(config, tmp_path / "second.log")  # the same data_dir, reopened
    try:
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            done = await wait_job(client, job["id"], timeout=60)
            assert done["progress"] == {"total": n, "completed": n, "failed": 0}
            rows = await results(client, job["id"])
            assert [r["index"] for r in rows] == list(range(n))
            assert all(r["generation"] == f"Echo: row {r['index']}" for r in rows)
            assert [j["id"] for j in (await client.get("/jobs")).json()["jobs"]] == [job["id"]]
    finally:
        second.close()


async def test_a_worker_joins_the_private_redis(mock, workers, data_dir):
    settings = jobs_settings(mock.url, None, data_dir=data_dir, consume=False)  # only the worker runs jobs
    async with serve(settings) as client:
        workers(jobs_settings(mock.url, socket_url(data_dir)))
        job = (await client.post("/jobs", json={"task": "text-generation", "rows": text_rows(5)})).json()
        done = await wait_job(client, job["id"])
        assert done["progress"]["completed"] == 5


def test_no_redis_server_and_no_redis_url_refuses_to_start(tmp_path, data_dir):
    config = default_config(tmp_path / "default.toml", "http://127.0.0.1:9", data_dir)
    env = {**os.environ, "PATH": str(Path(sys.executable).parent)}  # python, no redis-server
    done = subprocess.run([sys.executable, "-m", "app.cli", "serve", "--config", str(config),
                           "--port", str(free_port())], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "apt-get install redis-server" in done.stderr and "redis_url" in done.stderr


async def test_a_data_dir_too_long_for_a_socket_is_named(tmp_path):
    with pytest.raises(PrivateRedisError, match="too long"):
        async with private_redis(tmp_path / ("d" * 120)):
            pass


async def test_the_private_redis_is_started_again_if_it_dies(mock, data_dir):
    async with serve(jobs_settings(mock.url, None, data_dir=data_dir)) as client:
        job = (await client.post("/jobs", json={"task": "text-generation", "rows": text_rows(3)})).json()
        await wait_job(client, job["id"])
        await asyncio.sleep(1.5)  # (appendfsync everysec: the job is on disk)
        pid = int((Path(data_dir) / "redis.pid").read_text())
        os.kill(pid, signal.SIGKILL)

        async def back() -> bool:
            r = await client.get(f"/jobs/{job['id']}")
            assert r.status_code in (200, 503), r.text  # 503 while it restarts, never a 500
            return r.status_code == 200
        await wait_for(back, timeout=30, interval=0.05)
        assert int((Path(data_dir) / "redis.pid").read_text()) != pid
        assert (await get_job(client, job["id"]))["status"] == "completed"  # back from its append-only file
        assert [r["index"] for r in await results(client, job["id"])] == [0, 1, 2]
