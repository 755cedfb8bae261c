"""API keys (a job is visible only to the key that created it) and validation (every 4xx
before anything is queued)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from app.config import ServerConfig
from app.jobs import keys
from tests.conftest import ROOT
from tests.service import serve

from .conftest import jobs_settings, text_rows, wait_job

KEYS_ENV = "SYNTHSERVE_TEST_JOB_KEYS"


@pytest.mark.parametrize("mode", ["redis", "private"])
async def test_jobs_belong_to_their_key(mock, rds, redis_server, workers, monkeypatch, mode, data_dir):
    monkeypatch.setenv(KEYS_ENV, "key-a,key-b")
    settings = jobs_settings(mock.url, redis_server.url if mode == "redis" else None, data_dir=data_dir)
    settings.server = ServerConfig(api_keys_env=KEYS_ENV)
    if mode == "redis":
        workers(settings)
    a = {"Authorization": "Bearer key-a"}
    b = {"Authorization": "Bearer key-b"}
    async with serve(settings) as client:
        assert (await client.post("/jobs", json={"task": "text-generation", "rows": text_rows(2)})).status_code == 401
        assert (await client.get("/jobs")).status_code == 401
        r = await client.post("/jobs", json={"task": "text-generation", "rows": text_rows(2)}, headers=a)
        assert r.status_code == 202
        job_id = r.json()["id"]
        await wait_job(client, job_id, headers=a)
        for path in ("", "/results", "/events"):
            assert (await client.get(f"/jobs/{job_id}{path}", headers=b)).status_code == 404
        assert (await client.post(f"/jobs/{job_id}/cancel", headers=b)).status_code == 404
        assert (await client.delete(f"/jobs/{job_id}", headers=b)).status_code == 404
        assert (await client.get("/jobs", headers=b)).json() == {"jobs": []}
        assert [j["id"] for j in (await client.get("/jobs", headers=a)).json()["jobs"]] == [job_id]
        assert (await client.get(f"/jobs/{job_id}/results", headers=a)).status_code == 200


async def test_invalid_jobs_are_never_queued(mock, rds, redis_server):
    settings = jobs_settings(mock.url, redis_server.url)
    settings.server = ServerConfig(max_rows_per_request=5)
    async with serve(settings) as client:
        cases = [
            ({"task": "no-such-task", "rows": text_rows(1)}, 404, "no-such-task"),
            ({"task": "text-generation", "rows": [{"instruction": "ok"}, {"nope": 1}]}, 422, "rows[1]"),
            ({"task": "text-generation", "rows": []}, 422, "rows"),
            ({"task": "text-generation", "rows": text_rows(6)}, 413, "max_rows_per_request"),
            ({"task": "text-generation", "rows": text_rows(1), "params": {"bogus": 1}}, 422, "params"),
            ({"task": "text-generation", "rows": text_rows(1), "llm": {"backend": "nope"}}, 422, "backend"),
            ({"task": "text-generation", "rows": text_rows(1), "unknown_field": 1}, 422, None),
            ({"rows": text_rows(1)}, 422, None),
        ]
        for body, status, needle in cases:
            r = await client.post("/jobs", json=body)
            assert r.status_code == status, (body, r.text)
            if needle:
                assert needle in str(r.json()["detail"]), r.text
        assert (await client.get("/jobs")).json() == {"jobs": []}
    assert rds.keys("synthserve:*") == []
    assert (await mock.astats())["requests"] == 0


async def test_unknown_job(mock, rds, redis_server):
    async with serve(jobs_settings(mock.url, redis_server.url)) as client:
        for method, path in (("GET", ""), ("GET", "/results"), ("GET", "/events"), ("POST", "/cancel"),
                             ("DELETE", "")):
            r = await client.request(method, f"/jobs/job_missing{path}")
            assert r.status_code == 404 and "job_missing" in r.json()["detail"]
    assert keys.QUEUE not in rds.keys("*")


def test_worker_needs_redis(tmp_path):
    config = tmp_path / "no-redis.toml"
    config.write_text('[backends.mock]\nprovider = "openai"\nbase_url = "http://127.0.0.1:9/v1"\n')
    done = subprocess.run([sys.executable, "-m", "app.cli", "worker", "--config", str(config)], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "redis_url" in done.stderr
