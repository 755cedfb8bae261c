"""What a client may see of a failed LLM call: a row's `error` carries a stable `code`, the
backend's HTTP `status` (null without one) and a cleaned `message`; the raw detail goes to
the server log (with the request id the log formatter adds).

Cleaned, because the raw text comes from the backend and from the HTTP library: an
upstream may echo the request's `Authorization` header, and a refused connection names
the host and port the backend lives on. Keys become `[redacted]`; URLs, hosts and ports
become the backend's configured name.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from .limits import LLMError

log = logging.getLogger("synthserve.llm")

MAX_MESSAGE = 500

_SECRETS = (
    re.compile(r"(?i)\b(bearer|basic|token)(\s+)[^\s\"',;]+"),                              # a scheme and its credential
    re.compile(r"(?i)\b(api[-_]?key|key|token|secret|password)([\"']?\s*[:=]\s*[\"']?)[^\s\"',;]+"),  # key=..., "token": "..."
    re.compile(r"\b(?:sk|pk|rk|key|hf)[-_][A-Za-z0-9_\-]{6,}"),                      # sk-..., hf_..., key-...
    re.compile(r"\b[A-Za-z0-9_\-]{32,}\b"),                                          # any long opaque token
)
_URL = re.compile(r"\b[a-zA-Z][a-zA-Z0-9+.\-]*://[^\s'\"<>)]+")
_HOST_PORT = re.compile(r"(?:\[[0-9A-Fa-f:.]+\]|\b\d{1,3}(?:\.\d{1,3}){3}|\blocalhost|\b[A-Za-z0-9\-]+(?:\.[A-Za-z0-9\-]+)+)"
                        r"(?::\d{1,5})\b")
_ADDRESS = re.compile(r"\(\s*['\"][^'\"]*['\"]\s*,\s*\d{1,5}\s*\)")  # ('127.0.0.1', 53053) in OSError texts
_IPV4 = re.compile(r"\b\d{1,3}(?:\.\d{1,3}){3}\b")
_STATUS = re.compile(r"\bHTTP (\d{3})\b")


def clean_message(text: str, backend: str, secrets: tuple[str, ...] = ()) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, "[redacted]")
    for pattern in _SECRETS[:2]:
        text = pattern.sub(lambda m: f"{m.group(1)}{m.group(2)}[redacted]", text)
    for pattern in _SECRETS[2:]:
        text = pattern.sub("[redacted]", text)
    name = f"backend {backend!r}"
    text = _URL.sub(name, text)
    text = _ADDRESS.sub(name, text)
    text = _HOST_PORT.sub(name, text)
    text = _IPV4.sub(name, text)
    return text if len(text) <= MAX_MESSAGE else text[:MAX_MESSAGE] + "..."


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    link: BaseException | None = exc
    while link is not None and link not in seen:
        seen.append(link)
        link = link.__cause__ or link.__context__
    return seen


def status_and_code(exc: BaseException) -> tuple[int | None, str]:
    """The backend's HTTP status and a stable code, from the error and what caused it."""
    chain = _chain(exc)
    status = next((s for e in chain if isinstance(s := getattr(e, "status", None), int)), None)
    if status is None:
        m = _STATUS.search(str(exc))
        status = int(m.group(1)) if m else None
    text = " ".join(str(e) for e in chain).lower()
    if status == 429:
        return status, "rate_limited"
    if status is not None and status >= 500:
        return status, "backend_error"
    if status is not None and status >= 400:
        return status, "rejected"
    if any(isinstance(e, TimeoutError) for e in chain) or "timed out" in text:
        return status, "timeout"
    if any(isinstance(e, OSError) for e in chain) or "cannot reach" in text or "connect" in text:
        return status, "unreachable"
    if "cannot " in text and "backend" in text:
        return status, "unsupported"  # LLMClient.require: a capability the backend lacks
    return status, "invalid_response" if "invalid" in text or "unexpected" in text else "llm_error"


def row_error(exc: LLMError, client: Any) -> dict[str, Any]:
    """The `error` of a row whose LLM call failed; logs the raw detail."""
    name = getattr(client, "name", "llm")
    config = getattr(client, "config", None)
    key = config.api_key() if config is not None and hasattr(config, "api_key") else None
    status, code = status_and_code(exc)
    log.warning("LLM call to backend %s failed (%s): %s", name, code, exc)
    return {"type": "llm_error", "code": code, "status": status,
            "message": clean_message(str(exc), name, (key,) if key else ())}
