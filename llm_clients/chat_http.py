"""OpenAI-style chat completions over one pooled aiohttp session: the lean transport shared
by the providers whose servers speak that wire format (OpenAI-compatible servers, Mistral).

Why not the SDKs: measured against the mock (bench/mock_throughput_clients.py), a call
costs ~1.7 ms of client CPU through the openai SDK (httpx2 request, URL and header models
on top of aiohttp) and ~16 ms through the mistralai SDK (it builds pydantic models on
every call), against ~0.45 ms here, where one dumps, one read and one loads is all a call
does. At hundreds of calls per second that decides whether the event loop keeps up.

Errors: connection errors, timeouts and 408/409/429/5xx become TransientError (with
Retry-After), everything else LLMError. Nothing retries here; the CallPolicy does.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import aiohttp

from . import jsonio
from .base import Completion, GenerationKwargs, LLMClient, Message, Usage
from .limits import LLMError, TransientError, is_retryable_status, transient_status_error
from .ratelimit import estimate_tokens

OnChunk = Callable[[dict[str, Any]], None]


class ChatCompletionsHTTP:
    """POSTs payloads to one chat-completions URL. The session is opened on first use,
    because aiohttp binds it to the running loop."""

    def __init__(self, url: str, api_key: str, *, pool_size: int, timeout_s: float):
        self.url = url
        self._headers = {"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"}
        self._pool_size = max(pool_size, 1)
        # The policy times each attempt; this only stops a hung socket from outliving it.
        self._timeout = aiohttp.ClientTimeout(total=timeout_s + 5, sock_connect=min(timeout_s, 30))
        self._session: aiohttp.ClientSession | None = None

    def _open(self) -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(limit=self._pool_size, limit_per_host=0, ttl_dns_cache=300)
        self._session = aiohttp.ClientSession(connector=connector, headers=self._headers, timeout=self._timeout)
        return self._session

    async def post(self, payload: dict[str, Any]) -> Any:
        body = await self._request(payload, _read)
        try:
            return jsonio.loads(body)
        except ValueError as exc:
            raise LLMError(f"the LLM server answered invalid JSON: {body[:300]!r}") from exc

    async def stream(self, payload: dict[str, Any], on_chunk: OnChunk) -> None:
        async def read_events(response: aiohttp.ClientResponse) -> None:
            # Split lines ourselves: aiohttp's line iterator refuses lines over 64 KiB.
            pending = b""
            async for data in response.content.iter_any():
                *lines, pending = (pending + data).split(b"\n")
                for line in lines:
                    if _sse_line(line, on_chunk):
                        return
            _sse_line(pending, on_chunk)

        await self._request(payload, read_events)

    async def _request(self, payload: dict[str, Any],
                       consume: Callable[[aiohttp.ClientResponse], Awaitable[Any]]) -> Any:
        session = self._session or self._open()
        try:
            async with session.post(self.url, data=jsonio.dumps(payload)) as response:
                if response.status >= 400:
                    body = await response.read()
                    raise status_error(response.status, error_message(body), response.headers)
                return await consume(response)
        except (aiohttp.ClientError, TimeoutError) as exc:
            # ClientError: refused/reset connections, truncated bodies. TimeoutError: aiohttp's
            # own socket timeout (the policy's arrives here as a cancellation, not caught).
            raise TransientError(f"cannot reach the LLM server: {type(exc).__name__}: {exc}") from exc

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


async def _read(response: aiohttp.ClientResponse) -> bytes:
    return await response.read()


def _sse_line(line: bytes, on_chunk: OnChunk) -> bool:
    """Handle one server-sent-events line; True at the `[DONE]` sentinel."""
    if not line.startswith(b"data:"):
        return False  # blank separators, comments, `event:` lines
    data = line[5:].strip()
    if data == b"[DONE]":
        return True
    try:
        chunk = json.loads(data)
    except ValueError as exc:
        raise LLMError(f"the LLM server streamed invalid JSON: {data[:300]!r}") from exc
    if isinstance(chunk, dict) and chunk.get("error"):
        raise LLMError(f"the LLM server streamed an error: {chunk['error']}")
    on_chunk(chunk)
    return False


# ---- the JSON both transports hand back, into our types ----

def response_format(schema: dict[str, Any]) -> dict[str, Any]:
    """OpenAI's (and Mistral's) structured output: a json_schema response format. Not
    `strict`, which only takes schemas with every property required and no extra ones."""
    return {"type": "json_schema", "json_schema": {"name": _schema_name(schema), "schema": schema}}


def _schema_name(schema: dict[str, Any]) -> str:
    title = schema.get("title")
    name = re.sub(r"[^A-Za-z0-9_-]", "_", title)[:64] if isinstance(title, str) else ""
    return name or "output"


def status_error(status: int, message: str, headers: Mapping[str, str] | None) -> LLMError:
    """`headers` (case-insensitive, as every HTTP client hands them) give Retry-After and
    the x-ratelimit-* quota."""
    text = f"HTTP {status} from the LLM server: {message}"[:1000]
    if is_retryable_status(status):
        return transient_status_error(status, text, headers)
    return LLMError(text)


def error_message(body: bytes) -> str:
    try:
        error = json.loads(body).get("error")
        return str(error.get("message") or error) if isinstance(error, dict) else str(error)
    except (ValueError, AttributeError):
        return body[:300].decode(errors="replace")


def content_text(content: Any) -> str:
    """Message content: a string, or parts of which the text ones are the answer (Mistral's
    reasoning models also send `thinking` parts)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p["text"] for p in content if isinstance(p, dict) and p.get("type") == "text"
                       and isinstance(p.get("text"), str))
    return ""


def usage_of(usage: dict[str, Any] | None) -> Usage:
    if not usage:
        return Usage()
    return Usage(usage.get("prompt_tokens") or 0, usage.get("completion_tokens") or 0)


def parse_completions(body: Any, model: str) -> list[Completion]:
    """One Completion per choice, in index order. The call's usage rides on the first; the
    others carry zero, so that summing over completions counts the call once."""
    try:
        choices = sorted(body["choices"], key=lambda c: c.get("index", 0))
        model = body.get("model") or model
        out = [Completion(content_text(c["message"].get("content")), model, Usage(), c.get("finish_reason"))
               for c in choices]
    except (KeyError, TypeError, AttributeError) as exc:
        raise LLMError(f"unexpected chat completion payload: {str(body)[:300]}") from exc
    if not out:
        raise LLMError("the server answered no choices")
    out[0].usage = usage_of(body.get("usage"))
    return out


class StreamedCompletion:
    """Folds stream chunks into one Completion, passing each text delta on. Usage is taken
    from whichever chunk carries it (OpenAI: a last chunk with no choices, when asked;
    Mistral: the chunk with finish_reason)."""

    def __init__(self, model: str, on_delta: Callable[[str], Any]):
        self.model = model
        self.on_delta = on_delta
        self.parts: list[str] = []
        self.usage = Usage()
        self.finish_reason: str | None = None

    def __call__(self, chunk: dict[str, Any]) -> None:
        if chunk.get("usage"):
            self.usage = usage_of(chunk["usage"])
        self.model = chunk.get("model") or self.model
        for choice in chunk.get("choices") or ():
            delta = content_text((choice.get("delta") or {}).get("content"))
            if delta:
                self.parts.append(delta)
                self.on_delta(delta)
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]

    def completion(self) -> Completion:
        return Completion("".join(self.parts), self.model, self.usage, self.finish_reason)


class ChatCompletionsClient(LLMClient):
    """The provider hooks of every chat-completions API (OpenAI, Mistral): a subclass sets
    `self._http` (a transport with `post(payload)` and `stream(payload, on_chunk)`) and
    defines `payload(messages, kwargs, model, n=, stream=)`."""

    native_n = True
    _http: Any

    def payload(self, messages: list[Message], kwargs: GenerationKwargs, model: str, *,
                n: int = 1, stream: bool = False) -> dict[str, Any]:
        raise NotImplementedError

    async def _chat_n(self, messages, kwargs, model, n) -> list[Completion]:
        payload = self.payload(messages, kwargs, model, n=n)
        completions = await self.policy.run(lambda: self._post(payload, model),
                                            tokens=estimate_tokens(messages, kwargs, n))
        if len(completions) != n:
            raise LLMError(f"asked the server for n={n} completions, got {len(completions)}")
        return completions

    async def _chat(self, messages: list[Message], kwargs: GenerationKwargs, model: str) -> Completion:
        return (await self._post(self.payload(messages, kwargs, model), model))[0]

    async def _stream_chat(self, messages, kwargs, model, on_delta) -> Completion:
        streamed = StreamedCompletion(model, on_delta)
        await self._http.stream(self.payload(messages, kwargs, model, stream=True), streamed)
        return streamed.completion()

    async def _post(self, payload: dict[str, Any], model: str) -> list[Completion]:
        return parse_completions(await self._http.post(payload), model)

    async def aclose(self) -> None:
        await self._http.aclose()
