"""Request ids and structured logs: X-Request-ID in and out, one JSON access line per
request, and never an API key or row content in the logs."""

from __future__ import annotations

import io
import json
import logging
import re

import pytest

from app.config import ServerConfig
from app.logging import JSONFormatter, configure_logging, request_id
from tests.service import mock_settings, serve

KEYS_ENV = "SYNTHSERVE_TEST_LOG_KEYS"
KEY = "sk-log-secret-5d1e9b"
ROW_TEXT = "confidential-row-text-8842"


@pytest.fixture
def json_logs():
    """Every record at INFO and above, as the JSON formatter writes it."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JSONFormatter())
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        yield lambda: [json.loads(line) for line in stream.getvalue().splitlines()]
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


async def test_request_id_is_returned(mock):
    async with serve(mock_settings(mock.url)) as client:
        r = await client.get("/health", headers={"X-Request-ID": "client-id-123"})
        assert r.headers["x-request-id"] == "client-id-123"
        generated = (await client.get("/health")).headers["x-request-id"]
        assert re.fullmatch(r"[0-9a-f]{32}", generated)
        assert (await client.get("/health")).headers["x-request-id"] != generated
        # an id that could forge a log line or a header is replaced
        r = await client.get("/health", headers={"X-Request-ID": 'evil" id{}'})
        assert re.fullmatch(r"[0-9a-f]{32}", r.headers["x-request-id"])
        r = await client.get("/health", headers={"X-Request-ID": "x" * 500})
        assert len(r.headers["x-request-id"]) == 32
        # on errors and streams too
        r = await client.post("/tasks/nope", json={}, headers={"X-Request-ID": "err-1"})
        assert r.status_code == 404 and r.headers["x-request-id"] == "err-1"
        r = await client.post("/tasks/text-generation", json={"rows": [{"instruction": "hi"}], "stream": True},
                              headers={"X-Request-ID": "sse-1"})
        assert r.headers["x-request-id"] == "sse-1" and "event: done" in r.text


async def test_access_logs_are_json_and_hold_no_secrets(mock, monkeypatch, json_logs):
    monkeypatch.setenv(KEYS_ENV, KEY)
    mock.script([{"match": "broken", "status": 400}])
    settings = mock_settings(mock.url, server=ServerConfig(api_keys_env=KEYS_ENV))
    auth = {"Authorization": f"Bearer {KEY}"}
    async with serve(settings) as client:
        rows = [{"instruction": ROW_TEXT}, {"instruction": f"broken {ROW_TEXT}"}]
        r = await client.post("/tasks/text-generation?api_key=" + KEY,
                              json={"rows": rows}, headers={**auth, "X-Request-ID": "req-42"})
        assert r.status_code == 200 and r.json()["failed"] == 1
        await client.post("/tasks/text-generation", json={"rows": rows, "stream": True}, headers=auth)
        await client.post("/tasks/text-generation", json={"rows": rows}, headers={"Authorization": "Bearer sk-wrong-1"})
        await client.post("/tasks/text-generation", json={"rows": [{"instruction": 7}]}, headers=auth)  # 422
    records = [r for r in json_logs() if r["logger"] != "httpx"]  # httpx: this test's own client
    text = "\n".join(json.dumps(r) for r in records)
    assert KEY not in text and "sk-wrong-1" not in text
    assert ROW_TEXT not in text

    access = [r for r in records if r["logger"] == "synthserve.access"]
    assert [r["status"] for r in access] == [200, 200, 401, 422]
    first = access[0]
    assert first["request_id"] == "req-42"
    assert first["method"] == "POST" and first["path"] == "/tasks/text-generation"
    assert first["task"] == "text-generation"
    assert isinstance(first["duration_ms"], float)
    assert first["level"] == "info" and first["ts"].endswith("Z")
    assert len({r["request_id"] for r in access}) == 4


def test_json_formatter_carries_context_extra_and_exceptions():
    stream = io.StringIO()
    logger = logging.getLogger("synthserve.test-formatter")
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JSONFormatter())
    logger.addHandler(handler)
    logger.propagate = False
    token = request_id.set("rid-1")
    try:
        logger.warning("hello %s", "world", extra={"backend": "mock"})
        try:
            raise ValueError("boom")
        except ValueError:
            logger.exception("failed")
    finally:
        request_id.reset(token)
        logger.removeHandler(handler)
    first, second = (json.loads(line) for line in stream.getvalue().splitlines())
    assert first["msg"] == "hello world" and first["level"] == "warning"
    assert first["request_id"] == "rid-1" and first["backend"] == "mock"
    assert "ValueError: boom" in second["exc"]


def test_configure_logging_routes_everything_to_one_handler():
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    touched = [logging.getLogger(n) for n in ("uvicorn", "uvicorn.error", "uvicorn.access", "httpx", "httpcore")]
    saved_loggers = [(lg, lg.handlers[:], lg.propagate, lg.disabled, lg.level) for lg in touched]
    stream = io.StringIO()
    try:
        configure_logging("warning", "json", stream=stream)
        logging.getLogger("uvicorn.error").warning("from uvicorn")
        logging.getLogger("synthserve").info("below the level")
        lines = [json.loads(line) for line in stream.getvalue().splitlines()]
        assert [(r["logger"], r["msg"]) for r in lines] == [("uvicorn.error", "from uvicorn")]
        with pytest.raises(ValueError):
            configure_logging("info", "xml")
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
        for lg, handlers, propagate, disabled, level in saved_loggers:
            lg.handlers[:], lg.propagate, lg.disabled = handlers, propagate, disabled
            lg.setLevel(level)
