"""The sidecar over real HTTP: TGI's routes, the OpenAI chat route, errors and back-pressure,
and unchanged third-party clients (`text-generation`, `openai`) against it."""

from __future__ import annotations

import json
import threading

import httpx
import openai
import pytest
import text_generation
import torch
from text_generation.errors import OverloadedError, ValidationError

from sidecar.app import create_app

from .conftest import FRANCE, long_generation
from .server import request_limit


@pytest.fixture
async def http(sidecar_url):
    async with httpx.AsyncClient(base_url=sidecar_url, timeout=60) as client:
        yield client


def templated(engine, messages=FRANCE) -> str:
    return engine.apply_chat_template(messages)


async def sse(response: httpx.Response) -> list[tuple[str | None, str]]:
    """(event, data) of every event of a server-sent-events answer."""
    events, event = [], None
    async for line in response.aiter_lines():
        if line.startswith("event:"):
            event = line[6:].strip()
        elif line.startswith("data:"):
            events.append((event, line[5:].strip()))
            event = None
    return events


async def test_health_and_info(http, engine):
    assert (await http.get("/health")).status_code == 200
    info = (await http.get("/info")).json()
    assert info["router"] == "synthserve-sidecar"
    assert info["model_id"] == engine.model_id == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert info["model_dtype"] == "torch.float32" and info["model_device_type"] == "cpu"
    assert info["max_input_tokens"] < info["max_total_tokens"]


async def test_health_is_503_while_the_model_loads(engine):
    release = threading.Event()

    def slow_factory():
        release.wait(10)
        return engine

    app = create_app(slow_factory)
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://sidecar") as client:
            assert (await client.get("/health")).status_code == 503
            release.set()
            await app.state.loading
            assert (await client.get("/health")).status_code == 200


async def test_generate(http, engine):
    body = {"inputs": templated(engine), "parameters": {"max_new_tokens": 12, "details": True}}
    answer = (await http.post("/generate", json=body)).json()
    assert "Paris" in answer["generated_text"]
    details = answer["details"]
    assert details["finish_reason"] in ("eos_token", "length")
    assert details["generated_tokens"] == len(details["tokens"]) and details["prefill"] == []
    assert details["input_length"] == len(engine.encode(body["inputs"]))
    assert {"id", "text", "logprob", "special"} <= details["tokens"][0].keys()

    plain = (await http.post("/generate", json={**body, "parameters": {"max_new_tokens": 12}})).json()
    assert plain == {"generated_text": answer["generated_text"]}  # details only when asked

    compat = (await http.post("/", json=body)).json()  # TGI's `/`: a list of one
    assert isinstance(compat, list) and compat[0]["generated_text"] == answer["generated_text"]
    full = (await http.post("/generate", json={**body, "parameters": {"max_new_tokens": 12,
                                                                      "return_full_text": True}})).json()
    assert full["generated_text"] == body["inputs"] + answer["generated_text"]


async def test_generate_stream(http, engine):
    body = {"inputs": templated(engine), "parameters": {"max_new_tokens": 12}}
    async with http.stream("POST", "/generate_stream", json=body) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [json.loads(data) for _, data in await sse(response)]
    assert [e["index"] for e in events] == list(range(1, len(events) + 1))
    assert all(e["generated_text"] is None and e["details"] is None for e in events[:-1])
    last = events[-1]
    assert "".join(e["token"]["text"] for e in events if not e["token"]["special"]) == last["generated_text"]
    assert last["details"]["generated_tokens"] == len(events)
    final = (await http.post("/generate", json=body)).json()
    assert final["generated_text"] == last["generated_text"]

    async with http.stream("POST", "/", json={**body, "stream": True}) as response:  # TGI's `/` with stream
        assert len(await sse(response)) == len(events)


async def test_errors_use_tgi_bodies(http, engine):
    bad = await http.post("/generate", json={"inputs": "Hi", "parameters": {"top_p": 3}})
    assert bad.status_code == 422 and bad.json()["error_type"] == "validation"
    too_long = await http.post("/generate", json={"inputs": "Hi", "parameters": {"max_new_tokens": 10 ** 6}})
    assert too_long.status_code == 422 and "max_new_tokens" in too_long.json()["error"]
    malformed = await http.post("/generate", json={"parameters": {}})
    assert malformed.status_code == 422 and "inputs" in malformed.json()["error"]
    best_of = await http.post("/generate", json={"inputs": "Hi", "parameters": {"best_of": 2}})
    assert best_of.status_code == 422


async def test_a_full_queue_answers_429(http, engine):
    with request_limit(engine, 1):
        busy, _ = await long_generation(engine)
        body = {"inputs": "Hello", "parameters": {"max_new_tokens": 2}}
        answer = await http.post("/generate", json=body)
        assert answer.status_code == 429 and int(answer.headers["Retry-After"]) >= 1
        assert answer.json()["error_type"] == "overloaded"

        async with http.stream("POST", "/generate_stream", json=body) as response:  # as TGI: an event
            assert response.status_code == 200
            (event, data), = await sse(response)
        assert event == "error" and json.loads(data)["error_type"] == "overloaded"

        chat = await http.post("/v1/chat/completions", json={"messages": FRANCE, "stream": True})
        assert chat.status_code == 429 and "Retry-After" in chat.headers
        embed = await http.post("/embed", json={"inputs": ["Hello"]})
        assert embed.status_code == 429
        busy.cancel()


async def test_chat_completions(http, engine):
    body = {"model": "anything", "messages": FRANCE, "max_tokens": 12, "temperature": 0}
    answer = (await http.post("/v1/chat/completions", json=body)).json()
    choice = answer["choices"][0]
    assert "Paris" in choice["message"]["content"] and choice["message"]["role"] == "assistant"
    assert choice["finish_reason"] in ("stop", "length") and answer["model"] == engine.model_id
    usage = answer["usage"]
    assert usage["prompt_tokens"] == len(engine.encode(templated(engine)))
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"] > usage["prompt_tokens"]

    two = (await http.post("/v1/chat/completions", json={**body, "n": 2, "temperature": 1.0, "seed": 3})).json()
    assert [c["index"] for c in two["choices"]] == [0, 1]


async def test_chat_tokenize_and_tokenize(http, engine):
    answer = (await http.post("/chat_tokenize", json={"messages": FRANCE})).json()
    assert answer["templated_text"] == templated(engine)
    assert answer["templated_text"].endswith("<|im_start|>assistant\n")
    tokens = answer["tokenize_response"]
    assert "".join(t["text"] for t in tokens) == answer["templated_text"]
    assert [t["id"] for t in tokens] == engine.encode(answer["templated_text"])
    plain = (await http.post("/tokenize", json={"inputs": "Hello world"})).json()
    assert [t["text"] for t in plain] == ["Hello", " world"]


async def test_embed(http, engine):
    inputs = ["The cat sat on the mat.", [{"role": "user", "content": "The cat sat on the mat."}], "Hi"]
    vectors = (await http.post("/embed", json={"inputs": inputs})).json()
    direct = await engine.embed(inputs)
    assert len(vectors) == 3 and all(len(v) == 576 for v in vectors)
    for got, expected in zip(vectors, direct, strict=True):
        assert torch.nn.functional.cosine_similarity(torch.tensor(got), torch.tensor(expected), dim=0) > 0.9999
    # a string is one chat-templated user message
    assert torch.allclose(torch.tensor(vectors[0]), torch.tensor(vectors[1]), atol=1e-3)
    (single,) = (await http.post("/embed", json={"inputs": "Hi"})).json()  # TEI also takes one string
    assert torch.allclose(torch.tensor(single), torch.tensor(vectors[2]), atol=1e-3)


async def test_text_generation_client(sidecar_url, engine):
    client = text_generation.AsyncClient(sidecar_url, timeout=60)
    response = await client.generate(templated(engine), max_new_tokens=12)
    assert "Paris" in response.generated_text
    assert response.details.generated_tokens == len(response.details.tokens)

    streamed, last = "", None
    async for event in client.generate_stream(templated(engine), max_new_tokens=12):
        if not event.token.special:
            streamed += event.token.text
        last = event
    assert streamed == last.generated_text == response.generated_text
    assert last.details.finish_reason.value in ("eos_token", "length")

    with pytest.raises(ValidationError):
        await client.generate("Hi", max_new_tokens=10 ** 6)


async def test_text_generation_client_sees_overload(sidecar_url, engine):
    client = text_generation.AsyncClient(sidecar_url, timeout=60)
    with request_limit(engine, 1):
        busy, _ = await long_generation(engine)
        with pytest.raises(OverloadedError):
            await client.generate("Hello", max_new_tokens=2)
        with pytest.raises(OverloadedError):
            async for _ in client.generate_stream("Hello", max_new_tokens=2):
                pass
        busy.cancel()


async def test_openai_sdk(sidecar_url, engine):
    client = openai.AsyncOpenAI(base_url=sidecar_url + "/v1", api_key="unused", max_retries=0)
    try:
        answer = await client.chat.completions.create(model="smollm2", messages=FRANCE, max_tokens=12, temperature=0)
        assert "Paris" in answer.choices[0].message.content
        assert answer.usage.completion_tokens > 0

        deltas, finish, usage = [], None, None
        stream = await client.chat.completions.create(model="smollm2", messages=FRANCE, max_tokens=12, temperature=0,
                                                      stream=True, stream_options={"include_usage": True})
        async for chunk in stream:
            for choice in chunk.choices:
                deltas.append(choice.delta.content or "")
                finish = choice.finish_reason or finish
            usage = chunk.usage or usage
        assert "".join(deltas) == answer.choices[0].message.content
        assert finish == answer.choices[0].finish_reason
        assert usage.completion_tokens == answer.usage.completion_tokens

        stopped = await client.chat.completions.create(model="smollm2", messages=FRANCE, max_tokens=12,
                                                       temperature=0, stop=["Paris"])
        assert "Paris" not in stopped.choices[0].message.content and stopped.choices[0].finish_reason == "stop"
        pieces = []
        async for chunk in await client.chat.completions.create(model="smollm2", messages=FRANCE, max_tokens=12,
                                                                temperature=0, stop=["Paris"], stream=True):
            pieces += [c.delta.content or "" for c in chunk.choices]
        assert "".join(pieces) == stopped.choices[0].message.content
    finally:
        await client.close()
