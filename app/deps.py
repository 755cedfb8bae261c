"""Typed dependencies for the routes."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from .state import AppState


def get_state(request: Request) -> AppState:
    return request.app.state.synth


StateDep = Annotated[AppState, Depends(get_state)]


def wants_sse(request: Request, stream: bool) -> bool:
    return stream or "text/event-stream" in request.headers.get("accept", "")
