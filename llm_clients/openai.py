"""OpenAI chat completions: api.openai.com and every compatible server (vLLM, TGI's /v1,
llama.cpp, the mock).

One payload builder and one parser, two transports that send the same JSON and hand back
the same dicts:

- "sdk": the `openai` SDK (AsyncOpenAI on its aiohttp transport), through its generic
  `post`. The default for api.openai.com, where the SDK's auth and headers are worth
  their cost and a call takes seconds anyway.
- "aiohttp": ChatCompletionsHTTP (chat_http.py). The default for any other base_url,
  where calls are fast and many: ~0.45 ms of client CPU per call, against ~1.7 ms through
  the SDK's `post` and ~2.9 ms through its typed `chat.completions.create`
  (bench/mock_throughput_clients.py, 64 in flight, 100 ms latency).

Pass `transport=` to choose. Neither retries by itself (SDK max_retries=0); the CallPolicy does.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Literal
from urllib.parse import urlsplit

import httpx2
import openai

from .base import GenerationKwargs, Message
from .chat_http import ChatCompletionsClient, ChatCompletionsHTTP, OnChunk, response_format, status_error
from .limits import LLMError, TransientError

OPENAI_URL = "https://api.openai.com/v1"
NO_KEY = "unused"  # vLLM, the sidecar and the mock take any key, but the header must be there
Transport = Literal["sdk", "aiohttp"]

# Sent as is, under the same name.
_SAME_NAME = ("temperature", "top_p", "stop", "seed", "frequency_penalty", "presence_penalty")
# Not OpenAI parameters. vLLM (and TGI's /v1, which ignores unknown keys) take top_k and
# repetition_penalty with our meaning, so they go to compatible servers as extra body
# keys; api.openai.com answers 400 to unknown keys, so they are dropped there. do_sample
# has no wire name anywhere: do_sample=false means greedy, sent as temperature 0 unless
# a temperature is given.
_EXTRA = ("top_k", "repetition_penalty")


class OpenAIClient(ChatCompletionsClient):
    provider = "openai"
    capabilities = frozenset({"chat", "stream"})

    def __init__(self, name, config, policy, *, transport: Transport | None = None):
        super().__init__(name, config, policy)
        base_url = (config.base_url or OPENAI_URL).rstrip("/")
        official = urlsplit(base_url).hostname == "api.openai.com"
        self.send_extras = not official
        self.transport: Transport = transport or ("sdk" if official else "aiohttp")
        key, pool, timeout_s = config.api_key() or NO_KEY, policy.max_concurrency, policy.timeout_s
        self._http: ChatCompletionsHTTP | _SDKTransport = (
            _SDKTransport(base_url, key, pool_size=pool, timeout_s=timeout_s) if self.transport == "sdk"
            else ChatCompletionsHTTP(base_url + "/chat/completions", key, pool_size=pool, timeout_s=timeout_s))

    # ---- the wire format, shared by both transports ----

    def payload(self, messages: list[Message], kwargs: GenerationKwargs, model: str, *,
                n: int = 1, stream: bool = False) -> dict[str, Any]:
        given = kwargs.given()
        payload: dict[str, Any] = {"model": model, "messages": messages}
        for key in _SAME_NAME:
            if key in given:
                payload[key] = given[key]
        if "max_new_tokens" in given:
            payload["max_tokens"] = given["max_new_tokens"]
        if given.get("do_sample") is False and "temperature" not in given:
            payload["temperature"] = 0.0
        if self.send_extras:
            for key in _EXTRA:
                if key in given:
                    payload[key] = given[key]
        if n != 1:
            payload["n"] = n
        if kwargs.json_schema is not None:
            payload["response_format"] = response_format(kwargs.json_schema)
        if stream:
            payload["stream"] = True
            payload["stream_options"] = {"include_usage": True}
        return payload



class _SDKTransport:
    """The same payload through the SDK's generic `post` (its documented way to call any
    endpoint): the SDK's auth, headers and errors, without its per-call typed-param
    transform and response models, which we would only turn back into dicts."""

    def __init__(self, base_url: str, api_key: str, *, pool_size: int, timeout_s: float):
        limits = httpx2.Limits(max_connections=max(pool_size, 1), max_keepalive_connections=max(pool_size, 1))
        self._sdk = openai.AsyncOpenAI(
            api_key=api_key, base_url=base_url, max_retries=0,
            timeout=httpx2.Timeout(timeout_s + 5, connect=min(timeout_s, 30)),
            http_client=openai.DefaultAioHttpClient(limits=limits),
        )

    async def post(self, payload: dict[str, Any]) -> Any:
        with _sdk_errors():
            return await self._sdk.post("/chat/completions", body=payload, cast_to=object)

    async def stream(self, payload: dict[str, Any], on_chunk: OnChunk) -> None:
        with _sdk_errors():
            events = await self._sdk.post("/chat/completions", body=payload, cast_to=object,
                                          stream=True, stream_cls=openai.AsyncStream[object])
            async with events:
                async for chunk in events:
                    on_chunk(chunk)

    async def aclose(self) -> None:
        await self._sdk.close()


@contextmanager
def _sdk_errors() -> Iterator[None]:
    try:
        yield
    except openai.APIStatusError as exc:
        raise status_error(exc.status_code, exc.message, exc.response.headers) from exc
    except openai.APIConnectionError as exc:  # includes APITimeoutError
        raise TransientError(f"cannot reach the LLM server: {exc}") from exc
    except httpx2.TransportError as exc:  # raised while iterating a stream, outside the SDK's mapping
        raise TransientError(f"lost the LLM server mid-stream: {type(exc).__name__}: {exc}") from exc
    except openai.OpenAIError as exc:
        raise LLMError(f"{type(exc).__name__}: {exc}") from exc
