"""Fixtures for the task tests: the real app over real HTTP against the mock LLM server."""

from __future__ import annotations

from typing import Any

import pytest

from tests.service import mock_settings, serve


@pytest.fixture
async def service(mock):
    """The service with one backend, `mock` (OpenAI provider), pointing at the mock LLM."""
    async with serve(mock_settings(mock.url)) as client:
        yield client


async def run_task(client, task: str, rows: list[dict] | None = None, params: dict | None = None,
                   status: int = 200, **body: Any) -> dict:
    payload: dict[str, Any] = {"params": params or {}, **body}
    if rows is not None:
        payload["rows"] = rows
    response = await client.post(f"/tasks/{task}", json=payload)
    assert response.status_code == status, response.text
    return response.json()


def chat_prompts(requests: list[dict]) -> list[str]:
    """The last user message of each chat request the mock received, in arrival order."""
    out = []
    for r in requests:
        if r["route"] == "/v1/chat/completions":
            users = [m["content"] for m in r["body"]["messages"] if m["role"] == "user"]
            out.append(users[-1])
    return out


@pytest.fixture
async def tgi_service(mock):
    """The service whose one backend, `mock`, is a TGI backend on the mock's TGI routes
    (raw completion via /generate, the chat template via /chat_tokenize, /embed)."""
    async with serve(mock_settings(mock.url, provider="tgi")) as client:
        yield client


@pytest.fixture
async def embed_service(tgi_service):
    """As tgi_service, with embeddings on: the mock serves /embed as `synthserve sidecar`
    does, but its /info names a plain TGI router, so the client does not turn them on."""
    tgi_service.app.state.synth.backends["mock"].capabilities |= {"embed"}
    yield tgi_service
