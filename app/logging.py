"""Structured logs: one JSON object per line, carrying the request id of the request that
logged it (a context variable, so tasks a request spawns inherit it).

Configured by the CLI (`synthserve serve | worker | sidecar`), never at import: a library
or a test that imports the app keeps its own logging. What is logged is chosen so that
API keys and row contents never appear: access lines carry the method, path, status,
duration, request id and task name, nothing from the body, headers or query string.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from contextvars import ContextVar
from typing import IO, Any

FORMAT_ENV = "SYNTHSERVE_LOG_FORMAT"
request_id: ContextVar[str | None] = ContextVar("synthserve_request_id", default=None)

# Attributes every LogRecord has; anything else on a record came from `extra=`.
# (uvicorn adds `color_message`, its message with ANSI colours: dropped.)
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message", "asctime", "taskName", "color_message"}


class JSONFormatter(logging.Formatter):
    """`{"ts", "level", "logger", "msg", "request_id"?, ...extra, "exc"?}` on one line."""

    _cached: tuple[int, str] = (-1, "")

    def _timestamp(self, record: logging.LogRecord) -> str:
        second = int(record.created)
        cached_second, prefix = self._cached  # one tuple: threads never see half an update
        if second != cached_second:  # strftime once a second, not once a line
            prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._cached = (second, prefix)
        return f"{prefix}.{int(record.msecs):03d}Z"

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": self._timestamp(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        rid = getattr(record, "request_id", None) or request_id.get()
        if rid is not None:
            entry["request_id"] = rid
        for key, value in vars(record).items():
            if key not in _STANDARD and key not in entry:
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """For a terminal: the usual line, with the request id when there is one."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        rid = getattr(record, "request_id", None) or request_id.get()
        return f"{line} [{rid}]" if rid else line


def configure_logging(level: str | int = "info", fmt: str | None = None, stream: IO[str] | None = None) -> None:
    """Route every logger (uvicorn's included) to one handler on the root logger.
    `fmt` is "json" (the default, or $SYNTHSERVE_LOG_FORMAT) or "text"."""
    fmt = fmt or os.environ.get(FORMAT_ENV) or "json"
    if fmt not in ("json", "text"):
        raise ValueError(f"log format must be json or text, not {fmt!r}")
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JSONFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper() if isinstance(level, str) else level)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
    # our access middleware replaces uvicorn's access lines
    logging.getLogger("uvicorn.access").disabled = True
    # one INFO line per HTTP call of an SDK built on httpx: far too many at hundreds of calls/s
    for name in ("httpx", "httpcore"):
        logging.getLogger(name).setLevel(logging.WARNING)
