"""Pure ASGI middlewares (no BaseHTTPMiddleware: it buffers and would break streaming).

    AccessLog  outermost: request id (X-Request-ID in and out), one JSON access line and
               the HTTP metrics per request
    BodyLimit  413 for a body over `[server] max_body_bytes`, before anything parses it:
               at once from Content-Length, or while counting the bytes of a chunked body
"""

from __future__ import annotations

import json
import logging
import re
import time
import uuid

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .logging import request_id

access_log = logging.getLogger("synthserve.access")

REQUEST_ID_HEADER = b"x-request-id"
_VALID_REQUEST_ID = re.compile(r"[A-Za-z0-9._:@/+=-]{1,128}")


def _state(scope: Scope):
    return getattr(scope["app"].state, "synth", None)  # None before the lifespan ran


class AccessLog:
    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        rid = _incoming_request_id(scope) or uuid.uuid4().hex
        token = request_id.set(rid)
        rid_header = (REQUEST_ID_HEADER, rid.encode())
        started = time.perf_counter()
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), rid_header]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            self._record(scope, rid, status, time.perf_counter() - started)
            request_id.reset(token)

    @staticmethod
    def _record(scope: Scope, rid: str, status: int, seconds: float) -> None:
        route = scope.get("route")
        template = getattr(route, "path", None) or "unmatched"  # the template keeps label values bounded
        task = _task_name(scope, template)
        state = _state(scope)
        metrics = getattr(state, "metrics", None)
        method, path = scope["method"], scope["path"]
        if metrics is not None:
            if task is not None and template == "/tasks/{name}" and method == "POST":
                metrics.observe_request(method, template, status, seconds,
                                        task if state.registry.get(task) is not None else "unknown")
            else:
                metrics.observe_request(method, template, status, seconds)
        if access_log.isEnabledFor(logging.INFO):
            fields = {"method": method, "path": path, "status": status,
                      "duration_ms": round(seconds * 1000, 2), "request_id": rid}
            if task is not None:
                fields["task"] = task
            # a record made directly: Logger.info would walk the stack for the caller each time
            access_log.handle(access_log.makeRecord(access_log.name, logging.INFO, __file__, 0, "%s %s %d",
                                                    (method, path, status), None, extra=fields))


def _incoming_request_id(scope: Scope) -> str | None:
    for name, value in scope["headers"]:
        if name == REQUEST_ID_HEADER:
            text = value.decode("latin-1")
            # only ids that cannot forge a log line or a header
            return text if _VALID_REQUEST_ID.fullmatch(text) else None
    return None


def _task_name(scope: Scope, template: str) -> str | None:
    """The task of a /tasks/{name} request, or one a route recorded in `request.state.task`."""
    task = scope.get("state", {}).get("task")
    if task is None and template.startswith("/tasks/{name}"):
        task = scope.get("path_params", {}).get("name")
    return task if isinstance(task, str) else None


class BodyTooLarge(HTTPException):
    """Raised from `receive`; FastAPI passes HTTPExceptions from body reading through
    unchanged, so the app answers it like any 4xx: `{"detail": ...}` with 413."""

    def __init__(self, limit: int):
        super().__init__(413, f"request body larger than max_body_bytes ({limit} bytes)")


class BodyLimit:
    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        state = _state(scope)
        if state is None:
            return await self.app(scope, receive, send)
        limit = state.settings.server.max_body_bytes
        length = _content_length(scope)
        if length is not None and length > limit:
            return await _reject(send, BodyTooLarge(limit))
        received = 0
        response_started = False

        async def receive_limited() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit)
            return message

        async def send_tracked(message: Message) -> None:
            nonlocal response_started
            response_started = response_started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive_limited, send_tracked)
        except BodyTooLarge as exc:  # a consumer that let it through (not FastAPI's body parsing)
            if response_started:
                raise
            await _reject(send, exc)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def _reject(send: Send, exc: BodyTooLarge) -> None:
    body = json.dumps({"detail": exc.detail}).encode()
    await send({"type": "http.response.start", "status": 413,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})
