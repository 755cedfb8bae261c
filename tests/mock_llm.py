"""The mock LLM server every test and benchmark uses: a real HTTP server in its own process.

    python -m tests.mock_llm --host 127.0.0.1 --port 0 [--latency-ms 100]

It prints `mock_llm listening on http://HOST:PORT` once it accepts connections (so
`--port 0` works: read the line). Written on bare aiohttp.web, with no per-request
logging, so that one core serves well over 1,000 requests/s and the mock is never the
bottleneck of a throughput benchmark.

Model routes (same answers everywhere):
    OpenAI / Mistral / TGI-messages   POST /v1/chat/completions (stream or not, `n`), GET /v1/models
    TGI                               POST /generate, POST / (a one-element list, or a stream
                                      with "stream": true), POST /generate_stream, GET /info,
                                      POST /chat_tokenize, POST /embed, GET /health

The default answer is "Echo: " + the last user message (or the raw prompt), cut at the
first `stop` string and at `max_tokens` / `max_new_tokens` words. A request with structured
output (chat `response_format` other than text, TGI `parameters.grammar`) gets the JSON
object {"echo": <that message>, "format": <the response_format or grammar as sent>}. Token counts are
whitespace-split words: input = the prompt's words (all message contents), output = the
answer's. Streams send one word per chunk. Usage in a chat stream: with `stream_options`
given (OpenAI), a final usage chunk only when `include_usage` is true; without it
(Mistral's behaviour), usage rides on the chunk that carries `finish_reason`.

Control API (JSON), for tests:
    POST /_mock/script   [rule, ...]  replaces the rules; first matching rule wins. A rule:
        {"match": "substring of the last user message / raw prompt" (optional),
         "route": "/generate" (optional: only this path),
         "reply": "text" or ["text for use 1", "use 2", ...] (optional, cycles),
         "status": 500, "retry_after": 2 (optional: answer with an error instead),
         "latency_ms": 250, "chunk_delay_ms": 10 (optional),
         "times": 2 (optional: removed after 2 uses; default unlimited)}
    POST /_mock/reset    rules, counters and the request log
    POST /_mock/config   {"latency_ms": N, "chunk_delay_ms": M}  defaults for every request;
                         limits, as a rate-limited API enforces them (null = none; reset clears):
                         {"max_in_flight": 32, "rpm": 600, "tpm": 100000, "retry_after_s": 1}
                         A call past one is answered 429 at once, with Retry-After and OpenAI's
                         x-ratelimit-{limit,remaining,reset}-{requests,tokens} headers; tokens of a
                         call = prompt words + max_tokens / max_new_tokens; windows are 60 s sliding.
    GET  /_mock/stats    {"requests", "in_flight", "max_in_flight", "rate_limited", "by_route": {path: n}}:
                         model calls (the POST routes; `requests` counts the 429s of the limits
                         too, `rate_limited` only them); a call whose client disconnects is
                         cancelled and leaves in_flight
    GET  /_mock/requests [{"route", "body", "authorization"}, ...]  (last 10,000)
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import sys
import time
import zlib
from collections import deque
from math import ceil
from typing import Any

from aiohttp import web

LOG_SIZE = 10_000
MODEL_ID = "mock-model"
_dumps = json.dumps
_JSON = "application/json"


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # OpenAI content parts
        return " ".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


def _last_user(messages: list[dict]) -> str:
    for m in reversed(messages):
        if m.get("role") == "user":
            return _text(m.get("content"))
    return ""


def _words(text: str) -> int:
    return len(text.split())


def chatml(messages: list[dict]) -> str:
    parts = [f"<|im_start|>{m.get('role', 'user')}\n{_text(m.get('content'))}<|im_end|>\n" for m in messages]
    return "".join(parts) + "<|im_start|>assistant\n"


def echo_answer(prompt: str, structured: Any) -> str:
    if not structured or (isinstance(structured, dict) and structured.get("type") == "text"):
        return "Echo: " + prompt
    return _dumps({"echo": prompt, "format": structured})


def shape_answer(text: str, stop: Any, max_tokens: int | None) -> tuple[str, str]:
    """The answer cut at a stop string and at max_tokens words; and why it ended
    ("stop", "stop_sequence" or "length")."""
    reason = "stop"
    if stop:
        for s in [stop] if isinstance(stop, str) else stop:
            cut = text.find(s) if s else -1
            if cut >= 0:
                text, reason = text[:cut], "stop_sequence"
    if max_tokens is not None:
        words = text.split()
        if len(words) > max_tokens:
            text, reason = " ".join(words[:max_tokens]), "length"
    return text, reason


class Rule:
    __slots__ = ("match", "route", "reply", "status", "retry_after", "latency_ms", "chunk_delay_ms",
                 "times", "uses")

    def __init__(self, spec: dict):
        unknown = set(spec) - (set(self.__slots__) - {"uses"})
        if unknown:
            raise ValueError(f"unknown rule keys {sorted(unknown)}")
        self.match: str | None = spec.get("match")
        self.route: str | None = spec.get("route")
        self.reply: str | list[str] | None = spec.get("reply")
        self.status: int | None = spec.get("status")
        self.retry_after = spec.get("retry_after")
        self.latency_ms: float | None = spec.get("latency_ms")
        self.chunk_delay_ms: float | None = spec.get("chunk_delay_ms")
        self.times: int | None = spec.get("times")
        self.uses = 0

    def next_reply(self) -> str | None:
        if self.reply is None or isinstance(self.reply, str):
            return self.reply
        reply = self.reply[self.uses % len(self.reply)]
        self.uses += 1
        return reply


class MockLLM:
    def __init__(self, latency_ms: float = 0.0, chunk_delay_ms: float = 0.0):
        self.latency_ms = latency_ms
        self.chunk_delay_ms = chunk_delay_ms
        self.rules: list[Rule] = []
        self.epoch = 0  # bumped by reset: requests begun before it do not count after it
        self.reset()

    def reset(self) -> None:
        self.rules = []
        self.requests = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self.rate_limited = 0
        self.limits = RateLimits()
        self.by_route: dict[str, int] = {}
        self.log: deque[dict] = deque(maxlen=LOG_SIZE)
        self.created = int(time.time())
        self.seq = 0
        self.epoch += 1

    # ---- the shared per-request scaffolding ----

    def _rule(self, route: str, text: str) -> Rule | None:
        for i, rule in enumerate(self.rules):
            if (rule.route is None or rule.route == route) and (rule.match is None or rule.match in text):
                if rule.times is not None:
                    rule.times -= 1
                    if rule.times <= 0:
                        del self.rules[i]
                return rule
        return None

    async def _begin(self, request: web.Request) -> tuple[str, Any]:
        request["epoch"] = self.epoch
        route = request.path
        self.requests += 1
        self.by_route[route] = self.by_route.get(route, 0) + 1
        self.in_flight += 1
        if self.in_flight > self.max_in_flight:
            self.max_in_flight = self.in_flight
        try:
            raw = await request.read()
        except BaseException:
            self._end(request)
            raise
        try:
            body = json.loads(raw) if raw else {}
        except ValueError:
            body = None
        self.log.append({"route": route, "body": body, "authorization": request.headers.get("Authorization")})
        return route, body

    def _end(self, request: web.Request) -> None:
        if request.get("epoch") == self.epoch:
            self.in_flight -= 1

    async def _wait(self, rule: Rule | None) -> None:
        latency = rule.latency_ms if rule is not None and rule.latency_ms is not None else self.latency_ms
        if latency > 0:
            await asyncio.sleep(latency / 1000)

    def _chunk_delay(self, rule: Rule | None) -> float:
        delay = rule.chunk_delay_ms if rule is not None and rule.chunk_delay_ms is not None else self.chunk_delay_ms
        return delay / 1000

    @staticmethod
    def _error(rule: Rule, tgi: bool) -> web.Response:
        status = rule.status
        message = f"mock error {status}"
        body = ({"error": message, "error_type": "mock_error"} if tgi
                else {"error": {"message": message, "type": "mock_error", "param": None, "code": str(status)}})
        headers = {"Retry-After": str(rule.retry_after)} if rule.retry_after is not None else None
        return web.Response(status=status, body=_dumps(body).encode(), content_type=_JSON, headers=headers)

    @staticmethod
    def _bad_request(message: str, tgi: bool = False) -> web.Response:
        body = ({"error": message, "error_type": "validation"} if tgi
                else {"error": {"message": message, "type": "invalid_request_error"}})
        return web.Response(status=400, body=_dumps(body).encode(), content_type=_JSON)

    # ---- OpenAI / Mistral chat completions ----

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        route, body = await self._begin(request)
        try:
            if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
                return self._bad_request("body must be a JSON object with 'messages'")
            messages = body["messages"]
            prompt = _last_user(messages)
            rule = self._rule(route, prompt)
            await self._wait(rule)
            if rule is not None and rule.status is not None:
                return self._error(rule, tgi=False)
            n = body.get("n") or 1
            max_tokens = body.get("max_tokens") or body.get("max_completion_tokens")
            answers = []
            for _ in range(n):
                reply = rule.next_reply() if rule is not None else None
                text = echo_answer(prompt, body.get("response_format")) if reply is None else reply
                answers.append(shape_answer(text, body.get("stop"), max_tokens))
            input_tokens = sum(_words(_text(m.get("content"))) for m in messages)
            output_tokens = sum(_words(text) for text, _ in answers)
            usage = {"prompt_tokens": input_tokens, "completion_tokens": output_tokens,
                     "total_tokens": input_tokens + output_tokens}
            self.seq += 1
            cid = f"chatcmpl-mock-{self.seq}"
            model = body.get("model") or MODEL_ID
            if body.get("stream"):
                return await self._stream_chat(request, rule, body, cid, model, answers, usage)
            choices = [{"index": i, "message": {"role": "assistant", "content": text},
                        "finish_reason": "stop" if reason == "stop_sequence" else reason, "logprobs": None}
                       for i, (text, reason) in enumerate(answers)]
            answer = {"id": cid, "object": "chat.completion", "created": self.created, "model": model,
                      "choices": choices, "usage": usage}
            return web.Response(body=_dumps(answer).encode(), content_type=_JSON)
        finally:
            self._end(request)

    async def _stream_chat(self, request, rule, body, cid, model, answers, usage) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await response.prepare(request)
        delay = self._chunk_delay(rule)
        options = body.get("stream_options")
        usage_chunk = options is not None and bool(options.get("include_usage"))
        head = (f'data: {{"id":"{cid}","object":"chat.completion.chunk","created":{self.created},'
                f'"model":{_dumps(model)},')

        async def send(choices: list, extra: str = "") -> None:
            await response.write(f'{head}"choices":{_dumps(choices)}{extra}}}\n\n'.encode())

        for i, (text, reason) in enumerate(answers):
            await send([{"index": i, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}])
            for j, word in enumerate(text.split(" ")):
                if delay:
                    await asyncio.sleep(delay)
                await send([{"index": i, "delta": {"content": word if j == 0 else " " + word}, "finish_reason": None}])
            last = i == len(answers) - 1
            extra = f',"usage":{_dumps(usage)}' if last and options is None else ""
            finish = "stop" if reason == "stop_sequence" else reason
            await send([{"index": i, "delta": {}, "finish_reason": finish}], extra)
        if usage_chunk:
            await send([], f',"usage":{_dumps(usage)}')
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    async def models(self, request: web.Request) -> web.Response:
        return web.Response(body=_MODELS, content_type=_JSON)

    # ---- TGI ----

    async def generate(self, request: web.Request) -> web.StreamResponse:
        route, body = await self._begin(request)
        try:
            if not isinstance(body, dict) or not isinstance(body.get("inputs"), str):
                return self._bad_request("body must be a JSON object with 'inputs'", tgi=True)
            stream = route == "/generate_stream" or (route == "/" and bool(body.get("stream")))
            prompt = body["inputs"]
            params = body.get("parameters") or {}
            rule = self._rule(route, prompt)
            await self._wait(rule)
            if rule is not None and rule.status is not None:
                return self._error(rule, tgi=True)
            reply = rule.next_reply() if rule is not None else None
            text, reason = shape_answer(echo_answer(prompt, params.get("grammar")) if reply is None else reply,
                                        params.get("stop"), params.get("max_new_tokens"))
            reason = {"stop": "eos_token"}.get(reason, reason)
            tokens = [{"id": zlib.crc32(w.encode()) % 32000, "text": w if j == 0 else " " + w,
                       "logprob": -0.1, "special": False} for j, w in enumerate(text.split(" ")) if text]
            if stream:
                return await self._stream_generate(request, rule, params, text, reason, tokens)
            details = {"finish_reason": reason, "generated_tokens": len(tokens), "seed": params.get("seed"),
                       "prefill": [], "tokens": tokens}
            answer: dict[str, Any] = {"generated_text": text}
            if params.get("details"):
                answer["details"] = details
            return web.Response(body=_dumps([answer] if route == "/" else answer).encode(), content_type=_JSON)
        finally:
            self._end(request)

    async def _stream_generate(self, request, rule, params, text, reason, tokens) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await response.prepare(request)
        delay = self._chunk_delay(rule)
        tokens = tokens or [{"id": 0, "text": "", "logprob": 0.0, "special": True}]  # an empty answer: eos only
        for j, token in enumerate(tokens):
            if delay:
                await asyncio.sleep(delay)
            event = {"index": j, "token": token, "top_tokens": None, "generated_text": None, "details": None}
            if j == len(tokens) - 1:
                event["generated_text"] = text
                event["details"] = {"finish_reason": reason, "generated_tokens": len(tokens),
                                    "seed": params.get("seed"), "input_length": 0}
            await response.write(b"data:" + _dumps(event).encode() + b"\n\n")
        await response.write_eof()
        return response

    async def chat_tokenize(self, request: web.Request) -> web.Response:
        route, body = await self._begin(request)
        try:
            if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
                return self._bad_request("body must be a JSON object with 'messages'", tgi=True)
            rule = self._rule(route, _last_user(body["messages"]))
            await self._wait(rule)
            if rule is not None and rule.status is not None:
                return self._error(rule, tgi=True)
            templated = chatml(body["messages"])
            pieces = templated.split(" ")
            tokens, start = [], 0
            for j, piece in enumerate(pieces):
                text = piece if j == 0 else " " + piece
                tokens.append({"id": zlib.crc32(text.encode()) % 32000, "text": text,
                               "start": start, "stop": start + len(text)})
                start += len(text)
            answer = {"tokenize_response": tokens, "templated_text": templated}
            return web.Response(body=_dumps(answer).encode(), content_type=_JSON)
        finally:
            self._end(request)

    async def embed(self, request: web.Request) -> web.Response:
        """Deterministic 16-float vectors derived from each input's text."""
        route, body = await self._begin(request)
        try:
            inputs = body.get("inputs") if isinstance(body, dict) else None
            if isinstance(inputs, str):
                inputs = [inputs]
            if not isinstance(inputs, list) or not inputs:
                return self._bad_request("body must be a JSON object with 'inputs'", tgi=True)
            texts = [chatml(x) if isinstance(x, list) else str(x) for x in inputs]
            rule = self._rule(route, texts[-1])
            await self._wait(rule)
            if rule is not None and rule.status is not None:
                return self._error(rule, tgi=True)
            vectors = [[b / 255 - 0.5 for b in hashlib.sha256(t.encode()).digest()[:16]] for t in texts]
            return web.Response(body=_dumps(vectors).encode(), content_type=_JSON)
        finally:
            self._end(request)

    async def info(self, request: web.Request) -> web.Response:
        return web.Response(body=_INFO, content_type=_JSON)

    async def health(self, request: web.Request) -> web.Response:
        return web.Response(body=b"", status=200)

    # ---- control API ----

    async def ctl_script(self, request: web.Request) -> web.Response:
        body = await request.json()
        specs = body.get("rules") if isinstance(body, dict) else body
        if not isinstance(specs, list):
            return self._bad_request("expected a list of rules")
        try:
            self.rules = [Rule(spec) for spec in specs]
        except (ValueError, TypeError, AttributeError) as exc:
            return self._bad_request(str(exc))
        return web.Response(body=_OK, content_type=_JSON)

    async def ctl_reset(self, request: web.Request) -> web.Response:
        self.reset()
        return web.Response(body=_OK, content_type=_JSON)

    async def ctl_config(self, request: web.Request) -> web.Response:
        body = await request.json()
        if "latency_ms" in body:
            self.latency_ms = float(body["latency_ms"])
        if "chunk_delay_ms" in body:
            self.chunk_delay_ms = float(body["chunk_delay_ms"])
        self.limits.configure(body)
        return web.json_response({"latency_ms": self.latency_ms, "chunk_delay_ms": self.chunk_delay_ms})

    async def ctl_stats(self, request: web.Request) -> web.Response:
        return web.json_response({"requests": self.requests, "in_flight": self.in_flight,
                                  "max_in_flight": self.max_in_flight, "rate_limited": self.rate_limited,
                                  "by_route": self.by_route})

    @web.middleware
    async def limit(self, request: web.Request, handler) -> web.StreamResponse:
        """Answer 429 to a model call past the configured limits, before its handler runs
        (so it never counts in flight); the check and the handler's count of the call in
        flight happen with no await between them."""
        if request.method != "POST" or request.path.startswith("/_mock/") or not self.limits.any():
            return await handler(request)
        tokens = _call_tokens(await request.read()) if self.limits.tpm else 0
        refusal = self.limits.refuse(self.in_flight, tokens)
        if refusal is None:
            return await handler(request)
        self.requests += 1
        self.rate_limited += 1
        self.by_route[request.path] = self.by_route.get(request.path, 0) + 1
        body = {"error": {"message": "mock rate limit reached", "type": "rate_limit_exceeded",
                          "param": None, "code": "rate_limit_exceeded"}}
        return web.Response(status=429, body=_dumps(body).encode(), content_type=_JSON, headers=refusal)


    async def ctl_requests(self, request: web.Request) -> web.Response:
        return web.json_response(list(self.log))


def _call_tokens(raw: bytes) -> int:
    try:
        body = json.loads(raw)
    except ValueError:
        return 0
    if not isinstance(body, dict):
        return 0
    params = body.get("parameters") if isinstance(body.get("parameters"), dict) else body
    limit = params.get("max_tokens") or params.get("max_new_tokens") or 0
    if isinstance(body.get("messages"), list):
        prompt = sum(_words(_text(m.get("content"))) for m in body["messages"] if isinstance(m, dict))
    else:
        prompt = _words(str(body.get("inputs") or ""))
    return prompt + (limit if isinstance(limit, int) else 0)


class RateLimits:
    """The mock's own ceilings: calls in flight, and calls and tokens per sliding minute."""

    WINDOW_S = 60.0

    def __init__(self) -> None:
        self.max_in_flight: int | None = None
        self.rpm: int | None = None
        self.tpm: int | None = None
        self.retry_after_s = 1.0
        self.calls: deque[tuple[float, int]] = deque()  # (time, tokens) of the calls let through
        self.tokens = 0

    def configure(self, body: dict) -> None:
        for key in ("max_in_flight", "rpm", "tpm"):
            if key in body:
                setattr(self, key, None if body[key] is None else int(body[key]))
        if "retry_after_s" in body:
            self.retry_after_s = float(body["retry_after_s"])

    def any(self) -> bool:
        return self.max_in_flight is not None or self.rpm is not None or self.tpm is not None

    def refuse(self, in_flight: int, tokens: int) -> dict[str, str] | None:
        """None to let the call through (counted), else the headers of its 429."""
        now = time.monotonic()
        while self.calls and self.calls[0][0] <= now - self.WINDOW_S:
            self.tokens -= self.calls.popleft()[1]
        # when the oldest call leaves the window, a request's and its tokens' worth frees up
        reset = self.calls[0][0] + self.WINDOW_S - now if self.calls else 0.0
        headers: dict[str, str] = {}
        over_rate = False
        if self.rpm is not None:
            remaining = self.rpm - len(self.calls)
            over_rate |= remaining <= 0
            headers.update({"x-ratelimit-limit-requests": str(self.rpm),
                            "x-ratelimit-remaining-requests": str(max(remaining, 0)),
                            "x-ratelimit-reset-requests": f"{reset:.3f}s"})
        if self.tpm is not None:
            remaining = self.tpm - self.tokens
            over_rate |= remaining < tokens
            headers.update({"x-ratelimit-limit-tokens": str(self.tpm),
                            "x-ratelimit-remaining-tokens": str(max(remaining, 0)),
                            "x-ratelimit-reset-tokens": f"{reset:.3f}s"})
        if over_rate:
            headers["Retry-After"] = str(max(1, ceil(reset)))
            return headers
        if self.max_in_flight is not None and in_flight >= self.max_in_flight:
            return {"Retry-After": f"{self.retry_after_s:g}"}
        self.calls.append((now, tokens))
        self.tokens += tokens
        return None


_OK = b'{"ok": true}'
_MODELS = _dumps({"object": "list", "data": [{"id": MODEL_ID, "object": "model", "created": 0,
                                              "owned_by": "mock"}]}).encode()
_INFO = _dumps({
    "model_id": MODEL_ID, "model_sha": None, "model_dtype": "torch.float16", "model_device_type": "cpu",
    "model_pipeline_tag": "text-generation", "max_concurrent_requests": 128, "max_best_of": 2,
    "max_stop_sequences": 4, "max_input_tokens": 4095, "max_input_length": 4095, "max_total_tokens": 4096,
    "max_client_batch_size": 4, "router": "text-generation-router", "version": "mock",
    "sha": None, "docker_label": None,
}).encode()


def create_app(latency_ms: float = 0.0, chunk_delay_ms: float = 0.0) -> web.Application:
    mock = MockLLM(latency_ms, chunk_delay_ms)
    app = web.Application(client_max_size=64 * 1024 * 1024, middlewares=[mock.limit])
    app.add_routes([
        web.post("/v1/chat/completions", mock.chat_completions),
        web.get("/v1/models", mock.models),
        web.post("/generate", mock.generate),
        web.post("/generate_stream", mock.generate),
        web.post("/", mock.generate),
        web.post("/chat_tokenize", mock.chat_tokenize),
        web.post("/embed", mock.embed),
        web.get("/info", mock.info),
        web.get("/health", mock.health),
        web.post("/_mock/script", mock.ctl_script),
        web.post("/_mock/reset", mock.ctl_reset),
        web.post("/_mock/config", mock.ctl_config),
        web.get("/_mock/stats", mock.ctl_stats),
        web.get("/_mock/requests", mock.ctl_requests),
    ])
    app["mock"] = mock
    return app


async def serve(host: str, port: int, latency_ms: float, chunk_delay_ms: float) -> None:
    # handler_cancellation: a request whose client went away stops (and leaves in_flight), as
    # a real server stops generating; tests of cancellation can watch in_flight drop.
    runner = web.AppRunner(create_app(latency_ms, chunk_delay_ms), access_log=None, handle_signals=True,
                           handler_cancellation=True)
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=4096, reuse_address=True)
    await site.start()
    bound_host, bound_port = runner.addresses[0][:2]
    print(f"mock_llm listening on http://{host}:{bound_port}", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.mock_llm", description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9000)
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--chunk-delay-ms", type=float, default=0.0)
    args = parser.parse_args(argv)
    try:
        import uvloop
        runner = uvloop.run
    except ImportError:  # pragma: no cover
        runner = asyncio.run
    try:
        runner(serve(args.host, args.port, args.latency_ms, args.chunk_delay_ms))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    sys.exit(main())
