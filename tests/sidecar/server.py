"""The sidecar app over real HTTP inside a test: uvicorn on a free port in the test's event
loop, serving an engine that is already loaded. Shared by tests/sidecar and the tgi
provider's tests."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator

import httpx
import uvicorn

from sidecar.app import create_app
from tests.service import free_port


@contextlib.asynccontextmanager
async def run_sidecar(engine) -> AsyncIterator[str]:
    """Yield the base URL of a sidecar serving `engine`, healthy."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(lambda: engine), host="127.0.0.1", port=port,
                                           log_level="warning", lifespan="on"))
    task = asyncio.create_task(server.serve())
    url = f"http://127.0.0.1:{port}"
    try:
        while not server.started:
            if task.done():
                task.result()
                raise RuntimeError("the sidecar exited before it started")
            await asyncio.sleep(0.02)
        async with httpx.AsyncClient(base_url=url, timeout=10) as client:
            while (await client.get("/health")).status_code != 200:
                await asyncio.sleep(0.05)
        yield url
    finally:
        server.should_exit = True
        await task


@contextlib.contextmanager
def request_limit(engine, limit: int) -> Iterator[None]:
    """Lower the engine's in-flight limit (the bound of its queue) for one test."""
    saved = engine.max_concurrent_requests
    engine.max_concurrent_requests = limit
    try:
        yield
    finally:
        engine.max_concurrent_requests = saved
