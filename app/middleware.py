"""Pure ASGI middlewares (no BaseHTTPMiddleware: it buffers and would break streaming).

    AccessLog  outermost: request id (X-Request-ID in and out), one JSON access line and
               the HTTP metrics per request
    CORS       `[server] cors_origins`: preflights answered, headers on every answer
               (streams included); nothing at all when no origin is configured
    BodyLimit  413 for a body over `[server] max_body_bytes` (`max_json_body_bytes` for
               JSON), before anything parses it: at once from Content-Length, or while
               counting the bytes of a chunked body;
               a JSON body is read whole and refused (422) when it holds NaN, Infinity, a
               lone surrogate or bytes that are not UTF-8 (app.encoding)
    AllowedMethods  a 405 names every method of the path in `Allow`, not one route's
"""

from __future__ import annotations

import json
import logging
import re
import time
import uuid

from starlette.exceptions import HTTPException
from starlette.middleware.cors import CORSMiddleware
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .encoding import body_problem
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

    def __init__(self, limit: int, name: str = "max_body_bytes"):
        super().__init__(413, f"request body larger than {name} ({limit} bytes)")


class BodyLimit:
    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        state = _state(scope)
        if state is None:
            return await self.app(scope, receive, send)
        server = state.settings.server
        limit, name = server.max_body_bytes, "max_body_bytes"
        json_body = scope["method"] in _BODY_METHODS and _is_json(scope)
        if json_body and server.max_json_body_bytes < limit:
            # JSON is parsed whole, on the event loop (~10 ms a MB): uploads stream instead
            limit, name = server.max_json_body_bytes, "max_json_body_bytes"
        length = _content_length(scope)
        if length is not None and length > limit:
            return await _reject(send, 413, BodyTooLarge(limit, name).detail, close=True)
        if json_body:
            body = await _read_body(receive, limit, name)
            if body is None:  # the client left while sending
                return None
            if isinstance(body, BodyTooLarge):
                return await _reject(send, 413, body.detail)
            problem = body_problem(body)
            if problem is not None:
                return await _reject(send, 422, problem)
            return await self.app(scope, _replay(body, receive), send)
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
            await _reject(send, 413, exc.detail)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


def _is_json(scope: Scope) -> bool:
    """What FastAPI parses as JSON: a JSON media type, or none given."""
    for name, value in scope["headers"]:
        if name == b"content-type":
            return b"json" in value.lower()
    return True


async def _read_body(receive: Receive, limit: int, name: str) -> bytes | BodyTooLarge | None:
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return BodyTooLarge(limit, name)
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    """The body as one message, then the client's own messages (its disconnect)."""
    pending = True

    async def replay() -> Message:
        nonlocal pending
        if pending:
            pending = False
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


async def _reject(send: Send, status: int, detail: str, *, close: bool = False) -> None:
    """`close`: for a body refused unread (uvicorn would read and drop it to keep the
    connection); without it, a client still sending gets the answer once it has sent."""
    body = json.dumps({"detail": detail}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status,
                "headers": headers + [(b"connection", b"close")] if close else headers})
    await send({"type": "http.response.body", "body": body})


class CORS:
    """Starlette's CORSMiddleware over `[server] cors_origins`, built on the first request:
    the origins come from the settings the lifespan loads. Browsers send `Authorization`
    (API keys), `Last-Event-ID` (an EventSource resuming) and read `X-Request-ID` and
    `Retry-After`."""

    def __init__(self, app: ASGIApp):
        self.app = app
        self._cors: ASGIApp | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        state = _state(scope) if scope["type"] == "http" else None
        origins = state.settings.server.cors_origins if state is not None else None
        if not origins:
            return await self.app(scope, receive, send)
        if self._cors is None:
            self._cors = CORSMiddleware(
                self.app, allow_origins=list(origins), allow_methods=["GET", "POST", "PUT", "PATCH", "DELETE"],
                allow_headers=["Authorization", "Content-Type", "Accept", "Last-Event-ID", "X-Request-ID"],
                expose_headers=["X-Request-ID", "Retry-After"], max_age=600)
        await self._cors(scope, receive, send)


class AllowedMethods:
    """Starlette answers 405 from the first route whose path matches, so `Allow` lists that
    route's methods only (GET /tasks/{name} hides POST). This lists every route's."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_allowed(message: Message) -> None:
            if message["type"] == "http.response.start" and message["status"] == 405:
                allow = ", ".join(_methods(scope)).encode()
                message["headers"] = [(k, v) for k, v in message.get("headers", ()) if k.lower() != b"allow"]
                message["headers"].append((b"allow", allow))
            await send(message)

        await self.app(scope, receive, send_allowed)


_METHODS = ("DELETE", "GET", "HEAD", "PATCH", "POST", "PUT")


def _methods(scope: Scope) -> list[str]:
    """The methods some route fully matches for this path (asked through `matches`, the one
    interface every kind of route, included routers too, answers)."""
    routes = scope["app"].router.routes
    return [m for m in _METHODS
            if any(route.matches({**scope, "method": m, "path_params": {}})[0] == Match.FULL for route in routes)]
