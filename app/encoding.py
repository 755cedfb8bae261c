"""Strict JSON at the edge: what comes in and what goes out is JSON as RFC 8259 has it.

In: Python's json module accepts NaN, Infinity and -Infinity, and `\\ud800` escapes
decode to lone surrogates, strings that cannot be encoded again. A body holding any of them
is refused (app.middleware.BodyLimit) before a route parses it: a clean body costs a few
literal searches, and only a suspect one is parsed here to say where. An exponent that
overflows (1e999 -> inf) is found after parsing (`non_finite`, app.runs), where it costs
a walk over the values rather than a regex over every byte.

Out: `dumps` never writes NaN or Infinity (they become null) and never fails on a lone
surrogate (it becomes U+FFFD), whatever an LLM answered; SSE events and JSON answers use it.
It is orjson (which writes non-finite numbers as null, as we want, and refuses lone
surrogates and integers beyond 64 bits), with the stdlib encoder for what orjson refuses.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from typing import Any

import orjson
from starlette.responses import Response

_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


NOT_FINITE = "numbers must be finite (no NaN, Infinity or overflowing exponent)"


class _NonFinite(float):
    pass


def body_problem(body: bytes) -> str | None:
    """Why a JSON body is refused, naming where (`body.rows[0].x: ...`), or None. None too
    for a body that is not JSON at all: the route's parser says what is wrong with it."""
    if not body.isascii():
        try:
            body.decode()  # json.loads would also take UTF-16, or surrogates encoded in UTF-8
        except UnicodeDecodeError as exc:
            return f"body: not valid UTF-8 (at byte {exc.start})"
    # literal searches first (memchr-fast): a regex over every byte of a 50 MB body would
    # hold the event loop for a second
    if b"NaN" not in body and b"Infinity" not in body and not (b"\\u" in body and _SURROGATE_ESCAPE.search(body)):
        return None
    try:
        data = json.loads(body, parse_constant=_NonFinite)
    except (ValueError, RecursionError):
        return None
    stack: list[tuple[str, Any]] = [("body", data)]
    while stack:  # iterative: a deeply nested body must not overflow the stack here
        path, value = stack.pop()
        if isinstance(value, float) and not math.isfinite(value):
            return f"{path}: {NOT_FINITE}"
        if isinstance(value, str) and not _encodable(value):
            return f"{path}: strings must be valid Unicode (a lone surrogate \\uD800-\\uDFFF is not)"
        if isinstance(value, dict):
            for key, item in value.items():
                if not _encodable(key):
                    return f"{path}: keys must be valid Unicode (a lone surrogate \\uD800-\\uDFFF is not)"
                stack.append((f"{path}.{key}", item))
        elif isinstance(value, list):
            stack.extend((f"{path}[{i}]", item) for i, item in enumerate(value))
    return None


def first_path(value: Any, path: str, bad: Callable[[Any], bool]) -> str | None:
    """The path (`rows[3].score`) of the first leaf of parsed JSON that `bad` flags, or None."""
    if not _any_leaf(value, bad):  # the usual case, at a third of the cost: no path strings made
        return None
    stack = [(path, value)]
    while stack:
        where, item = stack.pop()
        if isinstance(item, dict):
            stack.extend((f"{where}.{k}", v) for k, v in item.items())
        elif isinstance(item, list):
            stack.extend((f"{where}[{i}]", v) for i, v in enumerate(item))
        elif bad(item):
            return where
    return None


def _any_leaf(value: Any, bad: Callable[[Any], bool]) -> bool:
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
        elif bad(item):
            return True
    return False


def non_finite(value: Any, path: str) -> str | None:
    """The path of the first float in parsed JSON that is not finite, or None."""
    return first_path(value, path, lambda item: isinstance(item, float) and not math.isfinite(item))


def _encodable(text: str) -> bool:
    if text.isascii():
        return True
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def dumps(data: Any) -> bytes:
    """Compact UTF-8 JSON, always valid (see the module's docstring)."""
    try:
        return orjson.dumps(data, option=orjson.OPT_NON_STR_KEYS)
    except orjson.JSONEncodeError:  # a lone surrogate, an integer beyond 64 bits
        pass
    try:
        return json.dumps(data, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()
    except (ValueError, UnicodeEncodeError):  # rare: an answer with inf or a lone surrogate
        return json.dumps(_clean(data), ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()


def _clean(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, str):
        return value if _encodable(value) else value.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    if isinstance(value, dict):
        return {_clean(k) if isinstance(k, str) else k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


class JSONBytes(Response):
    """A JSON answer encoded by `dumps` (Starlette's JSONResponse fails on NaN and lone surrogates)."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return dumps(content)


async def validation_error(request, exc) -> JSONBytes:
    """FastAPI's 422 for a body that fails its model, encoded by `dumps`: its default
    handler cannot encode an input that held inf (1e999) and answered 500."""
    from fastapi.encoders import jsonable_encoder
    return JSONBytes({"detail": jsonable_encoder(exc.errors())}, status_code=422)
