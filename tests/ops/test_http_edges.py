"""Auth, CORS and 405 at the HTTP edge: /metrics needs a key once keys are on (an API key
or the separate metrics key); a key that is not ASCII is a 401, not a 500; `[server]
cors_origins` answers preflights and marks every answer, streams included; a 405 names
every method of its path."""

from __future__ import annotations

import pytest

from app.config import ServerConfig
from tests.service import mock_settings, serve

KEYS_ENV, METRICS_ENV = "SYNTHSERVE_TEST_EDGE_KEYS", "SYNTHSERVE_TEST_EDGE_METRICS_KEY"
KEY, METRICS_KEY = "sk-edge-alpha-5d1e", "metrics-edge-77aa"
ORIGIN = "https://ui.example.org"


@pytest.fixture
async def secured(mock, monkeypatch):
    monkeypatch.setenv(KEYS_ENV, KEY)
    monkeypatch.setenv(METRICS_ENV, METRICS_KEY)
    server = ServerConfig(api_keys_env=KEYS_ENV, metrics_key_env=METRICS_ENV, cors_origins=[ORIGIN])
    async with serve(mock_settings(mock.url, server=server)) as client:
        yield client


async def test_metrics_need_a_key_once_keys_are_on(secured):
    assert (await secured.get("/metrics")).status_code == 401
    assert (await secured.get("/metrics", headers={"Authorization": "Bearer nope"})).status_code == 401
    for key in (KEY, METRICS_KEY):
        r = await secured.get("/metrics", headers={"Authorization": f"Bearer {key}"})
        assert r.status_code == 200 and "synthserve_http_requests_total" in r.text
    # the metrics key opens /metrics only
    r = await secured.get("/tasks", headers={"Authorization": f"Bearer {METRICS_KEY}"})
    assert r.status_code == 401
    assert (await secured.get("/health")).status_code == 200


@pytest.mark.parametrize("token", ["é", "sk-édge", "\u00ff" * 40])
async def test_a_key_that_is_not_ascii_is_a_401(secured, mock, token):
    header = f"Bearer {token}".encode("latin-1")
    for path in ("/tasks", "/metrics"):
        r = await secured.get(path, headers=[(b"Authorization", header)])
        assert r.status_code == 401, r.text
        assert r.json()["detail"] == "invalid API key"


async def test_cors_preflight_and_headers(secured, mock):
    r = await secured.options("/tasks/text-generation", headers={
        "Origin": ORIGIN, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type"})
    assert r.status_code == 200, r.text  # no key needed for a preflight
    assert r.headers["access-control-allow-origin"] == ORIGIN
    assert "POST" in r.headers["access-control-allow-methods"]
    assert "authorization" in r.headers["access-control-allow-headers"].lower()

    auth = {"Origin": ORIGIN, "Authorization": f"Bearer {KEY}"}
    r = await secured.post("/tasks/text-generation", json={"rows": [{"instruction": "hi"}]}, headers=auth)
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == ORIGIN
    assert "x-request-id" in r.headers["access-control-expose-headers"].lower()
    # an EventSource-style stream, and an error a page must be able to read
    async with secured.stream("POST", "/tasks/text-generation", headers={**auth, "Accept": "text/event-stream"},
                              json={"rows": [{"instruction": "hi"}]}) as s:
        assert s.headers["access-control-allow-origin"] == ORIGIN
        assert "event: done" in "".join([chunk async for chunk in s.aiter_text()])
    r = await secured.get("/tasks", headers={"Origin": ORIGIN})
    assert r.status_code == 401 and r.headers["access-control-allow-origin"] == ORIGIN

    r = await secured.options("/tasks", headers={"Origin": "https://evil.example",
                                                 "Access-Control-Request-Method": "GET"})
    assert "access-control-allow-origin" not in r.headers


async def test_without_origins_no_cors_and_405_names_the_real_methods(mock):
    async with serve(mock_settings(mock.url)) as service:
        await _no_cors_and_real_allow(service)


async def _no_cors_and_real_allow(service) -> None:
    r = await service.options("/tasks/text-generation", headers={
        "Origin": ORIGIN, "Access-Control-Request-Method": "POST"})
    assert r.status_code == 405
    assert "access-control-allow-origin" not in r.headers
    assert set(r.headers["allow"].split(", ")) == {"GET", "POST"}
    r = await service.delete("/tasks")
    assert r.status_code == 405 and r.headers["allow"] == "GET"
