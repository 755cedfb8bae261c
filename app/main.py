"""The FastAPI app. `create_app()` builds it without I/O; the lifespan loads the config,
builds the backends and the job manager, and closes them."""

from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse

from . import __version__
from .auth import principal
from .config import Settings, load_settings
from .errors import SynthserveError
from .metrics import Metrics
from .metrics import router as metrics_router
from .middleware import AccessLog, BodyLimit
from .routes import health, jobs, tasks
from .state import AppState

DESCRIPTION = """Generate synthetic training data with LLMs: POST rows to `/tasks/{name}` and get
rows back as JSON or server-sent events, or submit batch jobs to `/jobs`. See the README."""


def create_app(settings: Settings | None = None) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI):
        state = AppState.build(settings or load_settings())
        state.metrics = Metrics(state)
        await state.start()
        app.state.synth = state
        try:
            yield
        finally:
            await state.aclose()

    app = FastAPI(title="synthserve", version=__version__, description=DESCRIPTION, lifespan=lifespan)
    app.state.draining = asyncio.Event()  # set by app.server on SIGTERM: SSE streams end
    app.add_middleware(BodyLimit)
    app.add_middleware(AccessLog)  # outermost: sees the 413s too

    @app.exception_handler(SynthserveError)
    async def synthserve_error(request: Request, exc: SynthserveError) -> JSONResponse:
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)

    app.include_router(health.router)
    app.include_router(metrics_router)
    app.include_router(tasks.router, dependencies=[Depends(principal)])
    app.include_router(jobs.router, dependencies=[Depends(principal)])
    return app


app = create_app()
