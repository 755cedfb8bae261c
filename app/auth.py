"""API keys (`Authorization: Bearer <key>`), from the env var named by
`[server] api_keys_env`. With no keys configured, auth is off."""

from __future__ import annotations

import hashlib
import hmac
from typing import Annotated

from fastapi import Depends, Request

from .errors import Unauthorized


def key_id(key: str) -> str:
    """A stable, non-reversible id for a key: what jobs record as their owner and logs may show."""
    return hashlib.sha256(key.encode()).hexdigest()[:16]


async def principal(request: Request) -> str | None:
    """The caller's key id, or None when auth is off. 401 for a missing or wrong key."""
    keys = request.app.state.synth.api_keys
    if not keys:
        return None
    token = _bearer(request)
    if not _known(token, keys):
        raise Unauthorized("invalid API key", headers=_CHALLENGE)
    return key_id(token)


async def metrics_access(request: Request) -> None:
    """/metrics: open when no key is configured at all; else an API key or the metrics key."""
    state = request.app.state.synth
    metrics_key = state.settings.server.metrics_key()
    if not state.api_keys and metrics_key is None:
        return
    token = _bearer(request)
    if not _known(token, state.api_keys | ({metrics_key} if metrics_key else set())):
        raise Unauthorized("invalid API key", headers=_CHALLENGE)


_CHALLENGE = {"WWW-Authenticate": "Bearer"}


def _bearer(request: Request) -> str:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise Unauthorized("missing API key: send Authorization: Bearer <key>", headers=_CHALLENGE)
    return token


def _known(token: str, keys) -> bool:
    # bytes: compare_digest refuses str with non-ASCII characters (a header is latin-1 text)
    given = token.encode("utf-8", "surrogateescape")
    return any(hmac.compare_digest(given, k.encode("utf-8", "surrogateescape")) for k in keys)


PrincipalDep = Annotated[str | None, Depends(principal)]
