"""Server-sent events: encoding, and a response that notices a client leaving.

Under ASGI 2.4 Starlette only learns of a disconnect on its next send, so a stream that
is waiting for a slow row would keep paying for LLM calls nobody will read. This response
always listens for `http.disconnect` and cancels the stream (and with it the pending
calls) at once.
"""

from __future__ import annotations

import contextlib
from typing import Any

import anyio
from fastapi.sse import EventSourceResponse, format_sse_event

from .encoding import dumps
from .metrics import open_stream


def encode(event: str, data: Any, id: int | str | None = None) -> bytes:
    # dumps: never `Infinity` or an unencodable surrogate, whatever an answer held
    return format_sse_event(data_str=dumps(data).decode(), event=event, id=None if id is None else str(id))


class SSEResponse(EventSourceResponse):
    def __init__(self, content, **kwargs):
        headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no", **kwargs.pop("headers", {})}
        super().__init__(content, headers=headers, **kwargs)

    async def __call__(self, scope, receive, send) -> None:
        # On a graceful shutdown (app.server sets app.state.draining) the stream ends at
        # once with an `error` event instead of holding the shutdown to its timeout.
        draining = getattr(scope["app"].state, "draining", None) if "app" in scope else None
        sent = {"start": False, "end": False}

        async def tracked(message) -> None:
            sent["start"] = True
            sent["end"] = message["type"] == "http.response.body" and not message.get("more_body", False)
            await send(message)

        with open_stream(scope):
            async with anyio.create_task_group() as tg:
                async def stream() -> None:
                    try:
                        await self.stream_response(tracked)
                    except OSError:
                        pass
                    tg.cancel_scope.cancel()

                async def end_on_drain() -> None:
                    assert draining is not None
                    await draining.wait()
                    tg.cancel_scope.cancel()

                tg.start_soon(stream)
                if draining is not None:
                    tg.start_soon(end_on_drain)
                await self.listen_for_disconnect(receive)
                tg.cancel_scope.cancel()
            if draining is not None and draining.is_set() and sent["start"] and not sent["end"]:
                with contextlib.suppress(OSError):
                    await send({"type": "http.response.body", "more_body": False,
                                "body": encode("error", {"detail": "server shutting down"})})
