"""The sidecar's HTTP front: TGI's routes over the engine, and OpenAI's (sidecar.openai_routes).
No torch here; the engine comes from `engine_factory`, called in a thread at startup so
/health can answer 503 while the model loads.

Errors use TGI's body, `{"error", "error_type"}`: 422 validation, 429 overloaded (with
Retry-After), 500 generation, 503 while loading. On /generate_stream an error is an event
in the stream, as TGI sends it.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse

from . import openai_routes
from . import protocol as p
from .params import EngineError, Token
from .serving import EngineDep, TokenStream, Unavailable, error_json, error_response, sse

if TYPE_CHECKING:
    from .engine import Engine

__all__ = ["create_app", "serve"]



def create_app(engine_factory: Callable[[], Engine]) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI):
        app.state.loading = asyncio.create_task(asyncio.to_thread(engine_factory))
        yield
        # The engine may be shared with the rest of the process (get_engine): not closed here.

    app = FastAPI(title="synthserve sidecar", lifespan=lifespan)

    @app.exception_handler(RequestValidationError)
    async def _invalid_body(request: Request, exc: RequestValidationError) -> JSONResponse:
        message = "; ".join(f"{'.'.join(map(str, e['loc']))}: "
                            f"{'not an option this server knows' if e['type'] == 'extra_forbidden' else e['msg']}"
                            for e in exc.errors())
        return JSONResponse(p.error_body(message, "validation"), status_code=422)

    @app.exception_handler(EngineError)
    async def _engine_error(request: Request, exc: EngineError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(Unavailable)
    async def _unavailable(request: Request, exc: Unavailable) -> JSONResponse:
        return JSONResponse(p.error_body(str(exc), "unavailable"), status_code=503)

    @app.get("/health")
    async def health(request: Request) -> JSONResponse:
        loading = request.app.state.loading
        if not loading.done():
            return JSONResponse(p.error_body("the model is loading", "unavailable"), status_code=503)
        if loading.exception() is not None:
            return JSONResponse(p.error_body(f"the model failed to load: {loading.exception()}", "unavailable"),
                                status_code=503)
        return JSONResponse({"status": "ok"})

    @app.get("/info")
    async def info(engine: EngineDep) -> dict[str, Any]:
        return {
            **engine.info(),
            "model_sha": None,
            "model_pipeline_tag": "text-generation",
            "max_best_of": 1,
            "max_stop_sequences": p.MAX_STOP_SEQUENCES,
            "max_client_batch_size": 1,
            "validation_workers": 1,
            "router": p.ROUTER,
            "version": _version(),
            "sha": None,
            "docker_label": None,
            "embeddings": True,
        }

    @app.post("/generate")
    async def generate(body: p.GenerateRequest, engine: EngineDep) -> dict[str, Any]:
        return await _generate(engine, body)

    @app.post("/")
    async def compat(body: p.GenerateRequest, engine: EngineDep):
        if body.stream:
            return _generate_stream(engine, body)
        return [await _generate(engine, body)]

    @app.post("/generate_stream")
    async def generate_stream(body: p.GenerateRequest, engine: EngineDep) -> StreamingResponse:
        return _generate_stream(engine, body)

    @app.post("/chat_tokenize")
    async def chat_tokenize(body: p.ChatTokenizeRequest, engine: EngineDep) -> JSONResponse:
        text = engine.apply_chat_template(body.plain_messages())
        return JSONResponse({"tokenize_response": engine.tokenize(text), "templated_text": text})

    @app.post("/tokenize")
    async def tokenize(body: p.TokenizeRequest, engine: EngineDep) -> JSONResponse:
        return JSONResponse(engine.tokenize(body.inputs))

    @app.post("/embed")
    async def embed(body: p.EmbedRequest, engine: EngineDep) -> JSONResponse:
        # a JSONResponse: FastAPI would otherwise validate every float against the annotation
        return JSONResponse(await engine.embed(body.items(), normalize=body.normalize))

    app.include_router(openai_routes.router)
    return app


async def _generate(engine: Engine, body: p.GenerateRequest) -> dict[str, Any]:
    params = body.parameters
    result = await engine.generate(body.inputs, params.sampling(), truncate=params.truncate)
    return p.generate_response(result, details=params.details, top_n_tokens=params.top_n_tokens,
                               prefix=body.inputs if params.return_full_text else "")


def _generate_stream(engine: Engine, body: p.GenerateRequest) -> StreamingResponse:
    params = body.parameters

    async def events() -> AsyncIterator[str]:
        try:
            stream = TokenStream(engine, [(body.inputs, params.sampling(stream=True))], truncate=params.truncate)
        except EngineError as exc:
            yield sse(error_json(exc), event="error")
            return
        try:
            last: Token | None = None
            index = 0
            async for _, token in stream:
                if token is None:
                    break
                if last is not None:
                    index += 1
                    yield sse(p.stream_event(index, last, top_n_tokens=params.top_n_tokens))
                last = token
            result = await stream.result()
            assert last is not None  # a finished generation has at least one token
            yield sse(p.stream_event(index + 1, last, result, top_n_tokens=params.top_n_tokens,
                                     prefix=body.inputs if params.return_full_text else ""))
        except EngineError as exc:
            yield sse(error_json(exc), event="error")
        finally:
            stream.cancel()

    return StreamingResponse(events(), media_type="text/event-stream")


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("synthserve")
    except PackageNotFoundError:
        return "0"


def serve(args: argparse.Namespace, *, log_level: str = "info") -> None:
    """`synthserve sidecar`: load the model `args` (from `add_arguments`) name and serve it."""
    import uvicorn

    def engine_factory() -> Engine:
        from .engine import get_engine

        return get_engine(args.model, args.device, max_batch_size=args.max_batch_size,
                          max_concurrent_requests=args.max_concurrent_requests,
                          max_batch_tokens=args.max_batch_total_tokens)

    if not logging.getLogger().handlers:  # run alone (python -m sidecar); the CLI configures its own
        logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    uvicorn.run(create_app(engine_factory), host=args.host, port=args.port, log_level=log_level, log_config=None,
                access_log=False)
