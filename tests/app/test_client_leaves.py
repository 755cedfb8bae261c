"""A JSON request (not only a stream) stops paying when its client leaves: its pending
LLM calls are cancelled and no new one starts."""

from __future__ import annotations

import asyncio
import json
from urllib.parse import urlsplit


async def wait_for(predicate, what: str, tries: int = 500) -> None:
    for _ in range(tries):
        if await predicate():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"never: {what}")


async def test_json_request_cancels_its_calls_when_the_client_leaves(service, mock):
    mock.configure(latency_ms=1500)
    body = json.dumps({"rows": [{"instruction": f"row {i}"} for i in range(40)]}).encode()
    url = urlsplit(str(service.base_url))
    reader, writer = await asyncio.open_connection(url.hostname, url.port)
    writer.write(b"POST /tasks/text-generation HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
    await writer.drain()
    await wait_for(lambda: _in_flight(mock, 8), "8 calls in flight (max_concurrency)")

    writer.close()  # the client leaves, its 8 calls still waiting on the backend
    await wait_for(lambda: _in_flight(mock, 0), "the calls cancelled")
    await asyncio.sleep(2.0)  # longer than a call: a request still running would have started more
    stats = await mock.astats()
    assert stats["requests"] == 8 and stats["in_flight"] == 0
    assert (await service.get("/health")).status_code == 200


async def _in_flight(mock, n: int) -> bool:
    return (await mock.astats())["in_flight"] == n
