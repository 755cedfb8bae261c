"""Graceful shutdown of `synthserve serve` on SIGTERM, as a real process: requests in
flight finish, SSE streams end at once with an `error` event, the process exits well
before the graceful timeout; and its logs are JSON without keys or row contents."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest

from tests.ops.conftest import write_config

KEY = "sk-shutdown-secret-0b7c"
ROW_TEXT = "private-row-words-3141"


async def test_sigterm_drains_requests_and_ends_streams(mock, cli_server, tmp_path):
    mock.script([{"match": "slow-json", "latency_ms": 1500},
                 {"match": "slow-stream", "latency_ms": 60_000}])
    config = write_config(tmp_path / "synthserve.toml", mock.url, keys_env="SYNTHSERVE_TEST_SHUTDOWN_KEYS")
    proc, url = cli_server(config, {"SYNTHSERVE_TEST_SHUTDOWN_KEYS": KEY}, "--graceful-timeout", "20")
    auth = {"Authorization": f"Bearer {KEY}"}

    async with httpx.AsyncClient(base_url=url, timeout=30, headers=auth) as client:
        json_request = asyncio.create_task(client.post(
            "/tasks/text-generation", json={"rows": [{"instruction": f"slow-json {ROW_TEXT}"}]}))
        events: list[str] = []

        async def read_stream() -> None:
            body = {"rows": [{"instruction": f"slow-stream {ROW_TEXT}"}], "stream": True}
            async with client.stream("POST", "/tasks/text-generation", json=body) as r:
                assert r.status_code == 200
                async for line in r.aiter_lines():
                    events.append(line)

        stream = asyncio.create_task(read_stream())
        for _ in range(200):  # both calls are at the backend
            if (await mock.astats())["in_flight"] == 2:
                break
            await asyncio.sleep(0.02)
        assert (await mock.astats())["in_flight"] == 2

        started = time.monotonic()
        proc.terminate()
        await asyncio.wait_for(stream, 10)  # ends at once, not after 60 s or the graceful timeout
        assert time.monotonic() - started < 5
        assert "event: error" in events
        error = json.loads(events[events.index("event: error") + 1].removeprefix("data:"))
        assert error == {"detail": "server shutting down"}

        answer = await asyncio.wait_for(json_request, 10)  # drained: it finishes normally
        assert answer.status_code == 200
        assert answer.json()["rows"][0]["generation"].startswith("Echo: slow-json")

    code = await asyncio.to_thread(proc.wait, 10)
    assert code == 0  # a graceful stop, not the re-raised SIGTERM (143)
    assert time.monotonic() - started < 10
    with pytest.raises(httpx.TransportError):
        httpx.get(url + "/health", timeout=1)

    # the CLI's logs: JSON lines, an access line per request, no key, no row content
    logs = proc.logs()
    records = [json.loads(line) for line in logs.splitlines() if line.strip()]
    assert KEY not in logs and ROW_TEXT not in logs
    access = [r for r in records if r["logger"] == "synthserve.access"]
    posts = [r for r in access if r["method"] == "POST"]
    assert sorted(r["status"] for r in posts) == [200, 200]
    assert all(r["task"] == "text-generation" and r["request_id"] for r in posts)
