"""Run the real app over real HTTP inside a test: uvicorn on a free port, in the test's
event loop, with the app's lifespan. Used by every test that talks to the service."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import uvicorn

from app.config import DATA_DIR_ENV, BackendConfig, JobsConfig, Settings
from app.main import create_app


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fresh_data_dir() -> str:
    """A data_dir of its own, for one app's private Redis: under this test session's
    temporary directory (tests/conftest.py points $SYNTHSERVE_DATA_DIR into it), else
    (bench/) a new temporary directory."""
    session = os.environ.get(DATA_DIR_ENV)
    return tempfile.mkdtemp(prefix="d" if session else "synthserve-", dir=Path(session).parent if session else None)


def mock_settings(mock_url: str, *, provider: str = "openai", max_concurrency: int = 8,
                  max_retries: int = 2, timeout_s: float = 10.0, **extra) -> Settings:
    """Settings with one backend, `mock`, pointing at the mock LLM server (and, unless
    `jobs` says otherwise, a private Redis of its own)."""
    if "jobs" not in extra:
        extra["jobs"] = JobsConfig(data_dir=fresh_data_dir())
    base_url = mock_url + "/v1" if provider == "openai" else mock_url
    backend = BackendConfig(provider=provider, base_url=base_url, model="mock-model",
                            max_concurrency=max_concurrency, max_retries=max_retries, timeout_s=timeout_s)
    return Settings(backends={"mock": backend}, **extra)


@contextlib.asynccontextmanager
async def serve(settings: Settings, *, port: int | None = None) -> AsyncIterator[httpx.AsyncClient]:
    """Yield an httpx client whose base_url is the running service."""
    app = create_app(settings)
    # port 0: the OS picks a free port at bind time (probing first races other sessions)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port or 0, log_level="warning", lifespan="on"))
    task = asyncio.create_task(server.serve())
    try:
        while not server.started:
            if task.done():
                task.result()  # raises what failed the start
                raise RuntimeError("service exited before it started")
            await asyncio.sleep(0.02)
        port = server.servers[0].sockets[0].getsockname()[1]
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
            client.app = app  # type: ignore[attr-defined]
            yield client
    finally:
        server.should_exit = True
        await task
