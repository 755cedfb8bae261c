"""OpenAI's routes over the engine, so any OpenAI client can use the sidecar:
/v1/models, /v1/chat/completions, /v1/completions (a raw prompt, as /generate) and
/v1/embeddings (as /embed). Errors keep TGI's body, as on every sidecar route. No torch here."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse, StreamingResponse

from . import openai_wire as o
from .params import EngineError, StopTrimmer, Token
from .serving import EngineDep, Job, TokenStream, error_json, gather, sse

if TYPE_CHECKING:
    from .engine import Engine

router = APIRouter()


@router.get("/v1/models")
async def models(engine: EngineDep) -> dict[str, Any]:
    return {"object": "list", "data": [{"id": engine.model_id, "object": "model", "created": 0,
                                        "owned_by": o.ROUTER}]}


@router.post("/v1/chat/completions")
async def chat_completions(body: o.ChatRequest, engine: EngineDep):
    prompt = engine.apply_chat_template(body.plain_messages())
    jobs = [(prompt, params) for params in body.choices(body.sampling())]
    if body.stream:
        return _stream(engine, jobs, o.chat_chunk, o.new_id("chatcmpl"), prompts=1, logprobs=body.logprobs,
                       include_usage=body.include_usage, announce=True)
    return o.chat_completion(engine.model_id, await gather(engine, jobs), logprobs=body.logprobs)


@router.post("/v1/completions")
async def completions(body: o.CompletionRequest, engine: EngineDep):
    prompts, params = body.prompts(), body.sampling()
    jobs = [(prompt, choice) for prompt in prompts for choice in body.choices(params)]
    logprobs = body.logprobs is not None
    if body.stream:
        return _stream(engine, jobs, o.completion_chunk, o.new_id("cmpl"), prompts=len(prompts),
                       logprobs=logprobs, include_usage=body.include_usage)
    results = await gather(engine, jobs)
    choices = [o.completion_choice(i, result, logprobs=logprobs,
                                   prompt=_text(engine, prompt) if body.echo else "")
               for i, ((prompt, _), result) in enumerate(zip(jobs, results, strict=True))]
    prompt_tokens = sum(results[i * body.n].input_tokens for i in range(len(prompts)))
    return o.completion(engine.model_id, choices, results, prompt_tokens=prompt_tokens)


@router.post("/v1/embeddings")
async def embeddings(body: o.EmbeddingsRequest, engine: EngineDep) -> JSONResponse:
    vectors, tokens = await engine.embed_counted(body.texts(engine.hidden_size))
    return JSONResponse(o.embeddings(engine.model_id, vectors, tokens, base64_=body.encoding_format == "base64"))


def _text(engine: Engine, prompt: str | list[int]) -> str:
    return prompt if isinstance(prompt, str) else engine.tokenizer.decode(prompt)


def _stream(engine: Engine, jobs: Sequence[Job], chunk: Callable[..., dict[str, Any]], id_: str, *, prompts: int,
            logprobs: bool, include_usage: bool, announce: bool = False) -> StreamingResponse:
    """The choices of `jobs` as OpenAI chunks (`chunk`: chat's or completions'), each with its
    index, interleaved as their tokens come; stop sequences held back and never sent."""
    stream = TokenStream(engine, jobs)  # raises Overloaded here: a real 429
    model = engine.model_id

    async def events() -> AsyncIterator[str]:
        trimmers = [StopTrimmer(params.stop) for _, params in jobs]
        held: list[list[Token]] = [[] for _ in jobs]  # tokens of text not sent yet
        try:
            if announce:  # chat's first chunk of each choice: the role
                for i in range(len(jobs)):
                    yield sse(chunk(id_, model, index=i, text=""))
            async for i, token in stream:
                if token is None:
                    result = await stream.result(i)
                    yield sse(chunk(id_, model, index=i, text=trimmers[i].flush(),
                                    logprobs=held[i] if logprobs else None, finish_reason=result.openai_finish_reason))
                elif not token.special:
                    held[i].append(token)
                    if text := trimmers[i].feed(token.text):
                        yield sse(chunk(id_, model, index=i, text=text, logprobs=held[i] if logprobs else None))
                        held[i] = []
            if include_usage:
                results = [await stream.result(i) for i in range(len(jobs))]
                n = len(jobs) // prompts
                usage = o.usage(sum(results[i * n].input_tokens for i in range(prompts)),
                                sum(r.output_tokens for r in results))
                yield sse(chunk(id_, model, usage_=usage, with_choice=False))
            yield "data: [DONE]\n\n"
        except EngineError as exc:
            yield sse(error_json(exc), event="error")
        finally:
            stream.cancel()

    return StreamingResponse(events(), media_type="text/event-stream")
