"""Running the API server: uvicorn, with a graceful shutdown the app takes part in.

On SIGTERM (or SIGINT) uvicorn stops accepting connections and waits up to
`timeout_graceful_shutdown` for requests in flight to finish, then cancels them. JSON
requests drain in that window; SSE streams would hold it to the end (a job's event stream
never finishes on its own), so this server also sets `app.state.draining`, on which every
SSEResponse ends at once with an `error` event: clients reconnect elsewhere (job streams
resume with Last-Event-ID). A JSON request still running one second before the timeout is
cancelled and answered 503 with Retry-After (app.routes.tasks), not cut off. SIGTERM exits 0.
"""

from __future__ import annotations

import asyncio
import signal
from types import FrameType

import uvicorn
from fastapi import FastAPI

DEFAULT_GRACEFUL_TIMEOUT_S = 25.0  # under docker's/compose's stop_grace_period (30 s in deploy/)


class Server(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, app: FastAPI):
        super().__init__(config)
        self.app = app
        self._loop: asyncio.AbstractEventLoop | None = None

    async def serve(self, sockets=None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        if sig == signal.SIGTERM:
            # uvicorn re-raises a handled signal once it has shut down (exit status 143); a
            # SIGTERM is how an orchestrator asks for a graceful stop, and that succeeded: 0
            self._captured_signals.remove(sig)
        draining: asyncio.Event | None = getattr(self.app.state, "draining", None)
        if draining is not None and self._loop is not None:
            # a signal handler runs between bytecodes of the loop's own thread: hand over safely
            self._loop.call_soon_threadsafe(draining.set)


def run(app: FastAPI, *, host: str, port: int, log_level: str = "info",
        graceful_timeout_s: float = DEFAULT_GRACEFUL_TIMEOUT_S) -> None:
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, log_config=None,
                            access_log=False,
                            timeout_graceful_shutdown=graceful_timeout_s)  # type: ignore[arg-type]  # (a float works)
    app.state.graceful_timeout_s = graceful_timeout_s  # JSON requests answer 503 before it runs out
    Server(config, app).run()
