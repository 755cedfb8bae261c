"""Mistral's chat API (`server_url` = the backend's base_url, the server root, when set).

Two transports, one parameter mapping and one parser (chat_http.py):

- "sdk": the `mistralai` SDK, given no RetryConfig so that it never retries itself. The
  default for api.mistral.ai (base_url unset).
- "aiohttp": ChatCompletionsHTTP on `{base_url}/v1/chat/completions`, the same wire
  format. The default for any other base_url. The SDK builds pydantic models on every
  call (~16 ms of CPU per call measured here, against ~0.45 ms), which a busy server
  cannot afford.

Pass `transport=` to choose. Errors map as everywhere: connection errors, timeouts and
408/409/429/5xx become TransientError (with Retry-After), the rest LLMError.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Literal
from urllib.parse import urlsplit

import httpx2
from mistralai.client import Mistral
from mistralai.client import errors as mistral_errors

from .base import GenerationKwargs, Message
from .chat_http import ChatCompletionsClient, ChatCompletionsHTTP, OnChunk, response_format, status_error
from .limits import LLMError, TransientError

NO_KEY = "unused"
Transport = Literal["sdk", "aiohttp"]

# Sent under the same name (Mistral's API takes top_k and repetition_penalty as they are).
_SAME_NAME = ("temperature", "top_p", "stop", "frequency_penalty", "presence_penalty",
              "top_k", "repetition_penalty")


class MistralClient(ChatCompletionsClient):
    provider = "mistral"
    capabilities = frozenset({"chat", "stream"})
    native_n = True  # the API's `n`: one call, input tokens billed once

    def __init__(self, name, config, policy, *, transport: Transport | None = None):
        super().__init__(name, config, policy)
        base_url = config.base_url.rstrip("/") if config.base_url else None
        official = base_url is None or urlsplit(base_url).hostname == "api.mistral.ai"
        self.transport: Transport = transport or ("sdk" if official else "aiohttp")
        key, pool, timeout_s = config.api_key() or NO_KEY, policy.max_concurrency, policy.timeout_s
        self._http: ChatCompletionsHTTP | _SDKTransport = (
            _SDKTransport(base_url, key, pool_size=pool, timeout_s=timeout_s) if self.transport == "sdk"
            else ChatCompletionsHTTP(f"{base_url}/v1/chat/completions", key, pool_size=pool, timeout_s=timeout_s))

    # ---- mapping ----

    @staticmethod
    def payload(messages: list[Message], kwargs: GenerationKwargs, model: str, *,
                n: int = 1, stream: bool = False) -> dict[str, Any]:
        given = kwargs.given()
        payload: dict[str, Any] = {"model": model, "messages": messages}
        for key in _SAME_NAME:
            if key in given:
                payload[key] = given[key]
        if "max_new_tokens" in given:
            payload["max_tokens"] = given["max_new_tokens"]
        if "seed" in given:
            payload["random_seed"] = given["seed"]
        if given.get("do_sample") is False and "temperature" not in given:
            payload["temperature"] = 0.0  # greedy
        if n != 1:
            payload["n"] = n
        if kwargs.json_schema is not None:
            payload["response_format"] = response_format(kwargs.json_schema)
        if stream:
            payload["stream"] = True  # Mistral puts usage on the last chunk unasked
        return payload



class _SDKTransport:
    """The payload as keyword arguments of the SDK's typed calls; its answers back as the
    JSON-shaped dicts the shared parser reads."""

    def __init__(self, base_url: str | None, api_key: str, *, pool_size: int, timeout_s: float):
        pool = max(pool_size, 1)
        # Our own httpx2 client: pool sized to the backend's limit (the SDK's default holds
        # 100), and closed by aclose (the SDK leaves a client it was given alone).
        self._client = httpx2.AsyncClient(
            limits=httpx2.Limits(max_connections=pool, max_keepalive_connections=pool),
            timeout=httpx2.Timeout(timeout_s + 5, connect=min(timeout_s, 30)),
            follow_redirects=True,
        )
        self._sdk = Mistral(api_key=api_key, server_url=base_url, async_client=self._client,
                            retry_config=None, timeout_ms=int((timeout_s + 5) * 1000))

    async def post(self, payload: dict[str, Any]) -> Any:
        with _sdk_errors():
            response = await self._sdk.chat.complete_async(**payload)
        return response.model_dump(mode="json", by_alias=True)

    async def stream(self, payload: dict[str, Any], on_chunk: OnChunk) -> None:
        with _sdk_errors():
            events = await self._sdk.chat.stream_async(**payload)
            async with events:
                async for event in events:
                    on_chunk(event.data.model_dump(mode="json", by_alias=True))

    async def aclose(self) -> None:
        await self._client.aclose()


@contextmanager
def _sdk_errors() -> Iterator[None]:
    try:
        yield
    except mistral_errors.ResponseValidationError as exc:
        raise LLMError(f"unexpected payload from the Mistral server: {exc.message[:300]}") from exc
    except mistral_errors.MistralError as exc:
        raise status_error(exc.status_code, exc.body[:300], exc.headers) from exc
    except mistral_errors.NoResponseError as exc:
        raise TransientError(f"no answer from the Mistral server: {exc}") from exc
    except httpx2.TransportError as exc:  # connect/read errors and the SDK's own timeouts
        raise TransientError(f"cannot reach the Mistral server: {type(exc).__name__}: {exc}") from exc
