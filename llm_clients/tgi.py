"""The `tgi` provider: a text-generation-inference server, or `synthserve sidecar`, which
speaks the same protocol.

- chat and streaming: the server's OpenAI-compatible POST /v1/chat/completions;
- raw completion (magpie): POST /generate, whose `inputs` the server does not template;
- the chat template: POST /chat_tokenize;
- embeddings: POST /embed, which only the sidecar has. `start()` reads GET /info and adds
  the "embed" capability when the server says it is the sidecar.

Every route goes through one pooled aiohttp session (ChatCompletionsHTTP's, with its error
mapping: connection errors, timeouts and 408/409/429/5xx are TransientError with
Retry-After, the rest LLMError). Nothing retries here; the CallPolicy does.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import aiohttp

from sidecar.protocol import ROUTER as SIDECAR_ROUTER

from .base import Capability, Completion, GenerationKwargs, LLMClient, Message, Usage
from .chat_http import ChatCompletionsHTTP, StreamedCompletion, error_message, parse_completions, status_error
from .limits import LLMError, TransientError

log = logging.getLogger(__name__)

DEFAULT_URL = "http://127.0.0.1:8080"  # where `synthserve sidecar` listens by default
NO_KEY = "unused"  # TGI takes any bearer token unless it was started with an API key
BASE_CAPABILITIES: frozenset[Capability] = frozenset({"chat", "stream", "raw", "chat_template"})
PROBE_TIMEOUT_S = 10.0

# GenerationKwargs that /generate takes under the same name. presence_penalty has no TGI
# name and is left out.
_GENERATE = ("max_new_tokens", "temperature", "top_p", "top_k", "repetition_penalty", "frequency_penalty",
             "stop", "seed", "do_sample")
# The chat route's OpenAI names; top_k and repetition_penalty are extra keys the sidecar
# honours and TGI ignores.
_CHAT = ("temperature", "top_p", "stop", "seed", "frequency_penalty", "presence_penalty", "top_k",
         "repetition_penalty")


class TGIHTTP(ChatCompletionsHTTP):
    """ChatCompletionsHTTP pointed at /v1/chat/completions, plus `call` for TGI's other
    routes on the same session."""

    def __init__(self, base_url: str, api_key: str, *, pool_size: int, timeout_s: float):
        super().__init__(base_url + "/v1/chat/completions", api_key, pool_size=pool_size, timeout_s=timeout_s)
        self.base_url = base_url

    async def call(self, method: str, path: str, payload: Any = None) -> Any:
        session = self._session or self._open()
        data = None if payload is None else json.dumps(payload).encode()
        try:
            async with session.request(method, self.base_url + path, data=data) as response:
                body = await response.read()
                if response.status >= 400:
                    raise status_error(response.status, error_message(body), response.headers)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise TransientError(f"cannot reach the LLM server: {type(exc).__name__}: {exc}") from exc
        try:
            return json.loads(body)
        except ValueError as exc:
            raise LLMError(f"the LLM server answered invalid JSON: {body[:300]!r}") from exc


class TGIClient(LLMClient):
    provider = "tgi"

    def __init__(self, name, config, policy):
        super().__init__(name, config, policy)
        self.capabilities = BASE_CAPABILITIES  # + "embed" once start() finds the sidecar
        self.server_info: dict[str, Any] = {}
        self._http = TGIHTTP((config.base_url or DEFAULT_URL).rstrip("/"), config.api_key() or NO_KEY,
                             pool_size=policy.max_concurrency, timeout_s=policy.timeout_s)

    async def start(self) -> None:
        try:
            async with asyncio.timeout(min(PROBE_TIMEOUT_S, self.policy.timeout_s)):
                info = await self._http.call("GET", "/info")
        except (LLMError, TimeoutError) as exc:
            log.warning("backend %s: GET /info failed (%s); embeddings stay off", self.name, exc)
            return
        self.server_info = info if isinstance(info, dict) else {}
        if self.server_info.get("router") == SIDECAR_ROUTER:
            self.capabilities = BASE_CAPABILITIES | {"embed"}
        if not self.model:
            self.model = self.server_info.get("model_id") or ""

    async def aclose(self) -> None:
        await self._http.aclose()

    # ---- provider hooks ----

    async def _chat(self, messages: list[Message], kwargs: GenerationKwargs, model: str) -> Completion:
        return parse_completions(await self._http.post(chat_payload(messages, kwargs, model)), model)[0]

    async def _stream_chat(self, messages, kwargs, model, on_delta) -> Completion:
        streamed = StreamedCompletion(model, on_delta)
        await self._http.stream(chat_payload(messages, kwargs, model, stream=True), streamed)
        return streamed.completion()

    async def _complete(self, prompt: str, kwargs: GenerationKwargs, model: str) -> Completion:
        body = await self._http.call("POST", "/generate", {"inputs": prompt, "parameters": generate_parameters(kwargs)})
        try:
            text, details = body["generated_text"], body["details"]
            reason, generated = details["finish_reason"], details["generated_tokens"]
        except (KeyError, TypeError) as exc:
            raise LLMError(f"unexpected /generate payload: {str(body)[:300]}") from exc
        if reason == "stop_sequence":
            # TGI keeps the stop sequence; every other provider ends the text before it
            cuts = [i for i in (text.find(s) for s in kwargs.stop or ()) if i >= 0]
            text = text[:min(cuts)] if cuts else text
        # input_length: the sidecar's addition; real TGI only counts the prompt in `prefill`
        # (with decoder_input_details, which costs a prompt logprob pass), so it reports 0
        inputs = details.get("input_length") or len(details.get("prefill") or ())
        return Completion(text, model or self.model, Usage(inputs, generated),
                          "length" if reason == "length" else "stop")

    async def _apply_chat_template(self, messages: list[Message]) -> str:
        body = await self._http.call("POST", "/chat_tokenize", {"model": self.model or "tgi", "messages": messages})
        try:
            return body["templated_text"]
        except (KeyError, TypeError) as exc:
            raise LLMError(f"unexpected /chat_tokenize payload: {str(body)[:300]}") from exc

    async def _embed(self, inputs: list[str | list[Message]]) -> list[list[float]]:
        body = await self._http.call("POST", "/embed", {"inputs": inputs})
        if not isinstance(body, list) or len(body) != len(inputs):
            raise LLMError(f"/embed answered {type(body).__name__} for {len(inputs)} inputs")
        return body


def generate_parameters(kwargs: GenerationKwargs) -> dict[str, Any]:
    given = kwargs.given()
    params = {key: given[key] for key in _GENERATE if key in given}
    if params.get("temperature") == 0:  # TGI wants temperature > 0; 0 means greedy
        del params["temperature"]
        params["do_sample"] = False
    if params.get("top_p") == 1.0:  # TGI wants top_p < 1; 1 means no nucleus cut
        del params["top_p"]
    if kwargs.json_schema is not None:
        params["grammar"] = tgi_grammar(kwargs.json_schema)
    params["details"] = True
    return params


def tgi_grammar(schema: dict[str, Any]) -> dict[str, Any]:
    """TGI's grammar (and its chat route's response_format) for a JSON schema."""
    return {"type": "json", "value": schema}


def chat_payload(messages: list[Message], kwargs: GenerationKwargs, model: str, *,
                 stream: bool = False) -> dict[str, Any]:
    given = kwargs.given()
    payload: dict[str, Any] = {"model": model or "tgi", "messages": messages}
    payload.update((key, given[key]) for key in _CHAT if key in given)
    if "max_new_tokens" in given:
        payload["max_tokens"] = given["max_new_tokens"]
    if given.get("do_sample") is False and "temperature" not in given:
        payload["temperature"] = 0.0  # the chat route's greedy
    if kwargs.json_schema is not None:
        payload["response_format"] = tgi_grammar(kwargs.json_schema)
    if stream:
        payload["stream"] = True
        payload["stream_options"] = {"include_usage": True}
    return payload
