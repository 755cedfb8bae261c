"""Small builders shared by the provider tests."""

from __future__ import annotations

import socket

from app.config import BackendConfig
from llm_clients.limits import CallPolicy

MODEL = "mock-model"
USER = [{"role": "user", "content": "hello there"}]


def policy(max_concurrency: int = 8, *, max_retries: int = 2, timeout_s: float = 10.0) -> CallPolicy:
    # tiny backoff: retried tests stay fast; Retry-After (when sent) still wins
    return CallPolicy(max_concurrency, max_retries=max_retries, timeout_s=timeout_s,
                      backoff_base_s=0.001, backoff_max_s=5.0)


def backend(provider: str, base_url: str, **fields) -> BackendConfig:
    return BackendConfig(provider=provider, base_url=base_url, model=MODEL, **fields)


def closed_port_url() -> str:
    """A URL on which nothing listens (connection refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"
