"""A failed LLM call marks its row with a stable `code`, the backend's HTTP `status` and a
cleaned `message`: no key an upstream echoed, no host or port of the backend; the detail
is in the server log with the request id."""

from __future__ import annotations

import logging

import pytest
from aiohttp import web

from app.config import BackendConfig, Settings
from tests.service import free_port, serve

KEY = "sk-live-echoed-0123456789abcdef"
KEY_ENV = "SYNTHSERVE_TEST_ROW_ERRORS_KEY"


@pytest.fixture
async def echoing_upstream():
    """An OpenAI-style server that refuses every call, echoing the Authorization header and
    its own address, as some proxies do."""
    async def refuse(request: web.Request) -> web.Response:
        host = request.host
        return web.json_response({"error": {"message": f"invalid credentials {request.headers['Authorization']} "
                                                       f"at http://{host}/v1 (upstream {host})"}}, status=401)

    app = web.Application()
    app.router.add_post("/v1/chat/completions", refuse)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


def settings(base_url: str) -> Settings:
    backend = BackendConfig(provider="openai", base_url=base_url + "/v1", model="m", api_key_env=KEY_ENV,
                            max_retries=1, timeout_s=5)
    return Settings(backends={"upstream": backend})


async def test_an_echoed_key_and_the_address_never_reach_the_client(echoing_upstream, monkeypatch, caplog):
    monkeypatch.setenv(KEY_ENV, KEY)
    port = echoing_upstream.rsplit(":", 1)[1]
    caplog.set_level(logging.WARNING, logger="synthserve.llm")
    async with serve(settings(echoing_upstream)) as client:
        r = await client.post("/tasks/text-generation", json={"rows": [{"instruction": "hi"}]},
                              headers={"X-Request-ID": "req-row-errors-1"})
        async with client.stream("POST", "/tasks/text-generation",
                                 json={"rows": [{"instruction": "hi"}], "stream": True}) as s:
            streamed = "".join([chunk async for chunk in s.aiter_text()])
    assert r.status_code == 200
    error = r.json()["rows"][0]["error"]
    assert error["type"] == "llm_error" and error["code"] == "rejected" and error["status"] == 401
    for text in (r.text, streamed):
        assert KEY not in text and "sk-live" not in text and port not in text and "127.0.0.1" not in text
    assert "backend 'upstream'" in error["message"] and "[redacted]" in error["message"]
    logged = [rec for rec in caplog.records if rec.name == "synthserve.llm"]
    assert logged and port in logged[0].getMessage()  # the detail, for the operator


async def test_an_unreachable_backend_is_named_not_located():
    port = str(free_port())  # nothing listens there
    async with serve(settings(f"http://127.0.0.1:{port}")) as client:
        r = await client.post("/tasks/text-generation", json={"rows": [{"instruction": "hi"}]})
    error = r.json()["rows"][0]["error"]
    assert error["code"] == "unreachable" and error["status"] is None
    assert port not in r.text and "127.0.0.1" not in r.text
    assert "backend 'upstream'" in error["message"]
