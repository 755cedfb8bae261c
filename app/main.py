"""The FastAPI app. `create_app()` builds it without I/O; the lifespan loads the config,
starts the backends, composes the job engine (app.jobs) and closes it all in reverse."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from . import __version__, heap, openai_batch, ui, uploads
from .auth import principal
from .config import Settings, load_settings
from .encoding import validation_error
from .errors import SynthserveError, Unavailable
from .jobs.follow import EventHub
from .jobs.private import private_redis
from .jobs.store import JobStore
from .jobs.worker import Worker
from .metrics import Metrics
from .metrics import router as metrics_router
from .middleware import CORS, AccessLog, AllowedMethods, BodyLimit
from .routes import health, jobs, pipelines, tasks
from .spend import Spend
from .state import AppState

DESCRIPTION = """Generate synthetic training data with LLMs: POST rows to `/tasks/{name}` and get
rows back as JSON or server-sent events, or submit batch jobs to `/jobs`. See the README."""


def create_app(settings: Settings | None = None) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state = AppState.build(settings or load_settings())
        state.metrics = Metrics(state)
        async with AsyncExitStack() as stack:
            await state.start_backends()
            stack.push_async_callback(state.close_backends)  # last: the worker below uses them
            await open_jobs(stack, state)
            app.state.synth = state
            heap.settle()
            stack.callback(heap.unsettle)
            yield

    app = FastAPI(title="synthserve", version=__version__, description=DESCRIPTION, lifespan=lifespan,
                  docs_url=None, redoc_url=None)  # on local assets: app.ui
    app.state.draining = asyncio.Event()  # set by app.server on SIGTERM: SSE streams end
    app.add_middleware(AllowedMethods)
    app.add_middleware(BodyLimit)
    app.add_middleware(CORS)  # outside BodyLimit: a browser can read its 413s and 422s
    app.add_middleware(AccessLog)  # outermost: sees the 413s too

    app.add_exception_handler(RequestValidationError, validation_error)  # app.encoding: inf-safe

    @app.exception_handler(SynthserveError)
    async def synthserve_error(request: Request, exc: SynthserveError) -> JSONResponse:
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(RedisConnectionError)
    @app.exception_handler(RedisTimeoutError)
    async def jobs_unavailable(request: Request, exc: Exception) -> JSONResponse:
        # the detail (a host and port, a socket path) is for the log, not the client
        logging.getLogger("synthserve").warning("the job store (Redis) is unavailable: %s", exc)
        return await synthserve_error(request, Unavailable("the job store (Redis) is unavailable"))

    app.include_router(health.router)
    app.include_router(metrics_router)
    app.include_router(tasks.router, dependencies=[Depends(principal)])
    app.include_router(jobs.router, dependencies=[Depends(principal)])
    app.include_router(pipelines.router, dependencies=[Depends(principal)])
    ui.install(app)  # /ui, /docs
    uploads.install(app)  # POST /jobs with a file
    openai_batch.install(app)  # /v1/files, /v1/batches
    return app



async def open_jobs(stack: AsyncExitStack, state: AppState) -> None:
    """Redis (`[jobs] redis_url`, else a private redis-server), the store, the event reader,
    and a worker when this process consumes jobs itself (by default: with the private
    Redis, where no other worker runs). Closed by `stack`, in reverse."""
    config = state.settings.jobs
    url = config.redis_url
    if not url:
        url = await stack.enter_async_context(private_redis(config.data_dir))
    state.jobs = JobStore.connect(url, config)
    state.spend = Spend.open(state.settings, state.backends, state.jobs.redis)
    stack.push_async_callback(state.jobs.aclose)
    state.events = EventHub(state.jobs, url)
    await state.events.start()
    stack.push_async_callback(state.events.aclose)
    if config.consume if config.consume is not None else not config.redis_url:
        worker = Worker(state.jobs, state.registry, state.backends, config, spend=state.spend,
                        on_rows=state.metrics.count_rows)
        await stack.enter_async_context(worker.serving())
