"""SIGTERM on `synthserve serve`: a JSON request longer than the graceful timeout gets a
clean 503 with Retry-After before the timeout (not a 500 or a cut connection), and the
process exits 0 (not 143)."""

from __future__ import annotations

import asyncio

import httpx

from tests.ops.conftest import write_config


async def test_a_request_longer_than_the_grace_period_gets_a_503_and_the_server_exits_0(mock, cli_server, tmp_path):
    mock.script([{"match": "endless", "latency_ms": 60_000}])
    config = write_config(tmp_path / "synthserve.toml", mock.url, keys_env="SYNTHSERVE_TEST_DEADLINE_NO_KEYS")
    proc, url = cli_server(config, {}, "--graceful-timeout", "2")
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        request = asyncio.create_task(client.post("/tasks/text-generation",
                                                  json={"rows": [{"instruction": "endless"}]}))
        for _ in range(500):
            if (await mock.astats())["in_flight"] == 1:
                break
            await asyncio.sleep(0.02)
        proc.terminate()
        answer = await asyncio.wait_for(request, 20)
    assert answer.status_code == 503, answer.text
    assert answer.headers["retry-after"] == "1"
    assert "shutting down" in answer.json()["detail"]
    assert await asyncio.to_thread(proc.wait, 20) == 0
    assert "Task exception was never retrieved" not in proc.logs()
    assert (await mock.astats())["in_flight"] == 0  # its call was cancelled, not left running
