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
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise Unauthorized("missing API key: send Authorization: Bearer <key>", headers={"WWW-Authenticate": "Bearer"})
    token = token.strip()
    if not any(hmac.compare_digest(token, k) for k in keys):
        raise Unauthorized("invalid API key", headers={"WWW-Authenticate": "Bearer"})
    return key_id(token)


PrincipalDep = Annotated[str | None, Depends(principal)]
