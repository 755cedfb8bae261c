"""Nothing grows without bound: after three rounds of 500 concurrent SSE clients the
server's RSS is back near where the first round left it (a loose bound: the allocator
keeps some of what a round used; a leak per stream would add up round after round)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp

from tests.ops.conftest import write_config

CLIENTS = 500


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


async def one_round(url: str, clients: int) -> int:
    async def stream(http: aiohttp.ClientSession, i: int) -> bool:
        body = {"rows": [{"instruction": f"round row {i}"}], "stream": True}
        async with http.post(url + "/tasks/text-generation", json=body) as r:
            return r.status == 200 and b"event: done" in await r.read()

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0),
                                     timeout=aiohttp.ClientTimeout(total=120)) as http:
        return sum(await asyncio.gather(*(stream(http, i) for i in range(clients))))


async def test_rss_returns_near_its_level_after_rounds_of_sse_clients(mock, cli_server, tmp_path):
    config = write_config(tmp_path / "synthserve.toml", mock.url, keys_env="SYNTHSERVE_TEST_RSS_NO_KEYS")
    proc, url = cli_server(config)
    pid = proc.proc.pid
    started = rss_mb(pid)
    after = []
    for _ in range(3):
        assert await one_round(url, CLIENTS) == CLIENTS
        await asyncio.sleep(0.5)
        after.append(rss_mb(pid))
    assert after[2] < after[0] + 40, (started, after)  # no growth per round
    assert after[2] < started + 200, (started, after)
