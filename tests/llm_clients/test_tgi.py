"""The `tgi` provider against `synthserve sidecar` (the real embedded model over real HTTP)
and against the mock's TGI routes (a TGI that is not the sidecar, scripted failures)."""

from __future__ import annotations

import json

import pytest
import torch

from app.config import BackendConfig
from llm_clients.base import GenerationKwargs
from llm_clients.limits import LLMError, TransientError
from llm_clients.tgi import TGIClient, chat_payload, generate_parameters
from sidecar.engine import get_engine
from sidecar.params import SamplingParams
from tests.sidecar.server import run_sidecar

from .helpers import MODEL, closed_port_url, policy

FRANCE = [{"role": "user", "content": "What is the capital of France?"}]
GREEDY = GenerationKwargs(max_new_tokens=12, do_sample=False)


def tgi_client(url: str, *, model: str | None = MODEL) -> TGIClient:
    config = BackendConfig(provider="tgi", base_url=url, model=model, max_concurrency=8)
    return TGIClient("tgi", config, policy(8, max_retries=0, timeout_s=120))


@pytest.fixture(scope="module")
async def sidecar_url():
    async with run_sidecar(get_engine(device="cpu")) as url:
        yield url


@pytest.fixture
async def sidecar(sidecar_url):
    client = tgi_client(sidecar_url, model=None)
    await client.start()
    yield client
    await client.aclose()


async def test_start_finds_the_sidecar(sidecar):
    assert "embed" in sidecar.capabilities
    assert sidecar.model == "HuggingFaceTB/SmolLM2-135M-Instruct"  # from /info, none configured
    assert sidecar.server_info["router"] == "synthserve-sidecar"


async def test_chat_and_stream(sidecar):
    (completion,) = await sidecar.chat(FRANCE, GREEDY)
    assert "Paris" in completion.text and completion.finish_reason in ("stop", "length")
    assert completion.usage.input_tokens > 10 and completion.usage.output_tokens > 0
    deltas: list[str] = []
    streamed = await sidecar.stream_chat(FRANCE, GREEDY, on_delta=deltas.append)
    assert "".join(deltas) == streamed.text == completion.text
    assert streamed.usage == completion.usage


async def test_complete_raw(sidecar):
    prompt = "<|im_start|>system\nYou are a helpful cooking assistant.<|im_end|>\n<|im_start|>user\n"
    completion = await sidecar.complete(prompt, GREEDY)
    local = await get_engine(device="cpu").generate(prompt, SamplingParams(max_new_tokens=12))
    assert completion.text == local.completion_text  # sent as is, no template
    assert completion.usage.input_tokens == local.input_tokens
    assert completion.usage.output_tokens == local.output_tokens
    stopped = await sidecar.complete(prompt, GREEDY.model_copy(update={"stop": [" "]}))
    assert " " not in stopped.text and stopped.finish_reason == "stop"  # TGI keeps the stop; we cut it


async def test_chat_template_and_embed(sidecar):
    assert await sidecar.apply_chat_template(FRANCE) == get_engine(device="cpu").apply_chat_template(FRANCE)
    inputs = ["The cat sat on the mat.", FRANCE]
    got = await sidecar.embed(inputs)
    expected = await get_engine(device="cpu").embed(inputs)
    for a, b in zip(got, expected, strict=True):
        assert torch.nn.functional.cosine_similarity(torch.tensor(a), torch.tensor(b), dim=0) > 0.9999


async def test_a_real_tgi_has_no_embeddings(mock):
    client = tgi_client(mock.url)
    await client.start()
    try:
        assert "embed" not in client.capabilities and client.model == MODEL
        with pytest.raises(LLMError, match="cannot embed"):
            await client.embed(["x"])
        completion = await client.complete("hello world", GenerationKwargs(max_new_tokens=5))
        assert completion.text and completion.usage.output_tokens > 0
    finally:
        await client.aclose()


async def test_a_server_that_is_down(mock):
    client = tgi_client(closed_port_url())
    await client.start()  # logs and leaves embeddings off; must not raise
    try:
        assert "embed" not in client.capabilities
        with pytest.raises(TransientError):
            await client._complete("hello", GREEDY, "m")
    finally:
        await client.aclose()


@pytest.mark.parametrize(("status", "transient"), [(429, True), (503, True), (408, True), (422, False),
                                                   (424, False)])
async def test_status_mapping(mock, status, transient):
    await mock.ascript([{"route": "/generate", "status": status, "retry_after": 2}])
    client = tgi_client(mock.url)
    try:
        with pytest.raises(LLMError) as caught:
            await client._complete("hello", GREEDY, "m")
    finally:
        await client.aclose()
    assert isinstance(caught.value, TransientError) is transient
    if transient:
        assert caught.value.retry_after == 2


def test_generate_parameters():
    params = generate_parameters(GenerationKwargs(max_new_tokens=5, temperature=0, top_p=1.0, top_k=3, seed=1,
                                                  stop=["x"], repetition_penalty=1.1, presence_penalty=0.5))
    assert params == {"max_new_tokens": 5, "top_k": 3, "seed": 1, "stop": ["x"], "repetition_penalty": 1.1,
                      "do_sample": False, "details": True}  # temperature 0 and top_p 1 are TGI errors
    assert generate_parameters(GenerationKwargs(temperature=0.7, do_sample=True)) == {
        "temperature": 0.7, "do_sample": True, "details": True}


def test_chat_payload():
    payload = chat_payload(FRANCE, GenerationKwargs(max_new_tokens=5, do_sample=False, top_k=2), "m", stream=True)
    assert payload == {"model": "m", "messages": FRANCE, "max_tokens": 5, "top_k": 2, "temperature": 0.0,
                       "stream": True, "stream_options": {"include_usage": True}}


async def test_structured_output_through_the_sidecar(sidecar):
    """The tgi provider's native forms (chat `response_format`, /generate `grammar`) are
    what the sidecar constrains decoding to."""
    schema = {"type": "object", "properties": {"city": {"enum": ["Paris", "Lyon", "Nice"]},
                                               "population": {"type": "integer", "minimum": 1, "maximum": 99}},
              "required": ["city", "population"], "additionalProperties": False}
    kwargs = GenerationKwargs(max_new_tokens=24, temperature=1.0, seed=3).with_json_schema(schema)
    (completion,) = await sidecar.chat(FRANCE, kwargs)
    deltas: list[str] = []
    streamed = await sidecar.stream_chat(FRANCE, kwargs, on_delta=deltas.append)
    raw = await sidecar.complete(get_engine(device="cpu").apply_chat_template(FRANCE), kwargs)
    for text in (completion.text, streamed.text, raw.text):
        value = json.loads(text)
        assert value["city"] in ("Paris", "Lyon", "Nice") and 1 <= value["population"] <= 99, text
    assert "".join(deltas) == streamed.text
    assert generate_parameters(kwargs)["grammar"] == chat_payload(FRANCE, kwargs, "m")["response_format"] \
        == {"type": "json", "value": schema}
