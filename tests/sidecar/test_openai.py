"""OpenAI's routes on the sidecar with the unchanged `openai` SDK (completions, embeddings,
streams of n choices, logprobs), TGI's top_n_tokens and decoder_input_details, and strict
request handling: a null is an option left out, an option not honoured is a 422 naming it."""

from __future__ import annotations

import httpx
import openai
import pytest
import text_generation
import torch

from .conftest import FRANCE
from .test_app import sse

GREEDY = {"max_tokens": 6, "temperature": 0}


@pytest.fixture
async def http(sidecar_url):
    async with httpx.AsyncClient(base_url=sidecar_url, timeout=60) as client:
        yield client


@pytest.fixture
async def client(sidecar_url):
    client = openai.AsyncOpenAI(base_url=sidecar_url + "/v1", api_key="unused", max_retries=0)
    yield client
    await client.close()


def templated(engine) -> str:
    return engine.apply_chat_template(FRANCE)


async def test_completions_are_generate_over_openai(client, http, engine):
    prompt = templated(engine)
    tgi = (await http.post("/generate", json={"inputs": prompt, "parameters": {"max_new_tokens": 6,
                                                                              "details": True}})).json()
    answer = await client.completions.create(model="smollm2", prompt=prompt, **GREEDY, logprobs=2)
    (choice,) = answer.choices
    assert choice.text == tgi["generated_text"] and "Paris" in choice.text
    assert answer.object == "text_completion" and choice.finish_reason in ("stop", "length")
    assert answer.usage.prompt_tokens == tgi["details"]["input_length"]
    assert answer.usage.completion_tokens == tgi["details"]["generated_tokens"]
    logprobs = choice.logprobs
    assert logprobs.tokens == [t["text"] for t in tgi["details"]["tokens"]]
    assert logprobs.token_logprobs == pytest.approx([t["logprob"] for t in tgi["details"]["tokens"]], abs=1e-4)
    for token, logprob, top in zip(logprobs.tokens, logprobs.token_logprobs, logprobs.top_logprobs, strict=True):
        assert len(top) <= 2 and top[token] == pytest.approx(logprob)  # greedy: the best is the one chosen
        assert max(top.values()) == pytest.approx(logprob)

    echoed = await client.completions.create(model="smollm2", prompt=prompt, **GREEDY, echo=True)
    assert echoed.choices[0].text == prompt + choice.text

    ids, other = engine.encode(prompt), engine.encode("The capital of Italy is")
    many = await client.completions.create(model="smollm2", prompt=[ids, other], n=2, **GREEDY)  # token ids
    assert [c.index for c in many.choices] == [0, 1, 2, 3]
    assert many.choices[0].text == many.choices[1].text == choice.text
    assert many.usage.prompt_tokens == len(ids) + len(other)


async def test_echoed_logprobs_are_the_prompts(client, engine, plain_model):
    prompt = "The capital of France is"
    answer = await client.completions.create(model="smollm2", prompt=prompt, max_tokens=1, temperature=0,
                                             echo=True, logprobs=0)
    ids = engine.encode(prompt)
    logprobs = answer.choices[0].logprobs
    assert len(logprobs.tokens) == len(ids) + 1 and logprobs.token_logprobs[0] is None
    with torch.inference_mode():
        expected = plain_model(input_ids=torch.tensor([ids])).logits[0].log_softmax(-1)
    want = [expected[i, ids[i + 1]].item() for i in range(len(ids) - 1)]
    assert logprobs.token_logprobs[1:len(ids)] == pytest.approx(want, abs=1e-3)


async def test_streams_of_several_choices(client, engine):
    for create, text_of in ((client.chat.completions.create, lambda c: c.delta.content),
                            (client.completions.create, lambda c: c.text)):
        kwargs = {"messages": FRANCE} if create == client.chat.completions.create else {"prompt": templated(engine)}
        whole = await create(model="smollm2", **kwargs, **GREEDY, n=3)
        texts, finished, usage = {}, {}, None
        async for chunk in await create(model="smollm2", **kwargs, **GREEDY, n=3, stream=True,
                                        stream_options={"include_usage": True}):
            for c in chunk.choices:
                texts[c.index] = texts.get(c.index, "") + (text_of(c) or "")
                if c.finish_reason:
                    assert c.index not in finished
                    finished[c.index] = c.finish_reason
            usage = chunk.usage or usage
        content = [getattr(c, "message", c) for c in whole.choices]
        assert texts == {i: getattr(c, "content", None) or c.text for i, c in enumerate(content)}
        assert finished == {c.index: c.finish_reason for c in whole.choices}
        assert usage.completion_tokens == whole.usage.completion_tokens
        assert usage.prompt_tokens == whole.usage.prompt_tokens


async def test_chat_logprobs(client):
    answer = await client.chat.completions.create(model="smollm2", messages=FRANCE, **GREEDY, logprobs=True,
                                                  top_logprobs=3)
    choice = answer.choices[0]
    tokens = choice.logprobs.content
    assert "".join(t.token for t in tokens) == choice.message.content
    for t in tokens:
        assert t.logprob <= 0 and bytes(t.bytes).decode() == t.token
        assert len(t.top_logprobs) == 3 and t.top_logprobs[0].token == t.token
        assert [a.logprob for a in t.top_logprobs] == sorted((a.logprob for a in t.top_logprobs), reverse=True)

    streamed = []
    async for chunk in await client.chat.completions.create(model="smollm2", messages=FRANCE, **GREEDY,
                                                            logprobs=True, stream=True):
        for c in chunk.choices:
            streamed += c.logprobs.content if c.logprobs else []
    assert [t.token for t in streamed] == [t.token for t in tokens]
    assert all(t.top_logprobs == [] for t in streamed)

    plain = await client.chat.completions.create(model="smollm2", messages=FRANCE, **GREEDY)
    assert plain.choices[0].logprobs is None  # only when asked


async def test_embeddings_are_embed_over_openai(client, http, engine):
    texts = ["The cat sat on the mat.", "Hi"]
    expected = (await http.post("/embed", json={"inputs": texts})).json()
    for encoding in ({}, {"encoding_format": "float"}):  # unless told, the SDK asks for base64 and decodes it
        answer = await client.embeddings.create(model="smollm2", input=texts, **encoding)
        assert [d.index for d in answer.data] == [0, 1]
        for got, want in zip(answer.data, expected, strict=True):
            assert len(got.embedding) == engine.hidden_size
            assert torch.nn.functional.cosine_similarity(torch.tensor(got.embedding), torch.tensor(want),
                                                         dim=0) > 0.9999
        assert answer.usage.prompt_tokens == sum(len(engine.tokenizer(engine.apply_chat_template(
            [{"role": "user", "content": t}]), add_special_tokens=False)["input_ids"]) for t in texts)
    one = await client.embeddings.create(model="smollm2", input="Hi", dimensions=engine.hidden_size)
    assert len(one.data) == 1
    with pytest.raises(openai.UnprocessableEntityError) as refused:
        await client.embeddings.create(model="smollm2", input="Hi", dimensions=64)
    assert "dimensions" in refused.value.body  # TGI's error body: the SDK hands over its `error`


async def test_top_n_tokens_and_decoder_input_details(sidecar_url, engine, plain_model):
    tgi = text_generation.AsyncClient(sidecar_url, timeout=60)
    prompt = templated(engine)
    response = await tgi.generate(prompt, max_new_tokens=4, top_n_tokens=3, decoder_input_details=True)
    details = response.details
    ids = engine.encode(prompt)
    assert [t.id for t in details.prefill] == ids and details.prefill[0].logprob is None
    with torch.inference_mode():
        expected = plain_model(input_ids=torch.tensor([ids])).logits[0].log_softmax(-1)
    assert [t.logprob for t in details.prefill[1:]] == pytest.approx(
        [expected[i, ids[i + 1]].item() for i in range(len(ids) - 1)], abs=1e-3)
    assert len(details.top_tokens) == len(details.tokens)
    for token, top in zip(details.tokens, details.top_tokens, strict=True):
        assert len(top) == 3 and top[0].id == token.id and top[0].logprob == pytest.approx(token.logprob)

    events = [e async for e in tgi.generate_stream(prompt, max_new_tokens=4, top_n_tokens=2)]
    assert [[t.id for t in e.top_tokens] for e in events] == [[t.id for t in top[:2]] for top in details.top_tokens]


async def test_nulls_are_options_left_out(sidecar_url, http, engine):
    # the text-generation client sends every option, null when unset
    chat = await text_generation.AsyncClient(sidecar_url, timeout=60).chat(messages=FRANCE, max_tokens=6,
                                                                            temperature=0)
    assert "Paris" in chat.choices[0].message.content
    body = {"messages": FRANCE, "max_tokens": 6, "temperature": 0, "n": None, "stop": None, "logprobs": None,
            "response_format": None, "stream_options": None, "seed": None}
    answer = await http.post("/v1/chat/completions", json=body)
    assert answer.status_code == 200 and len(answer.json()["choices"]) == 1
    params = {"max_new_tokens": 2, "stop": None, "details": None, "top_n_tokens": None, "grammar": None}
    assert (await http.post("/generate", json={"inputs": "Hi", "parameters": params})).status_code == 200


@pytest.mark.parametrize(("route", "body", "named"), [
    ("/generate", {"inputs": "Hi", "parameters": {"watermark": True}}, "watermark"),
    ("/generate", {"inputs": "Hi", "parameters": {"adapter_id": "x"}}, "adapter_id"),
    ("/generate", {"inputs": "Hi", "parameters": {"top_n_tokens": 2}}, "top_n_tokens"),  # needs details
    ("/generate", {"inputs": "Hi", "parameters": {"decoder_input_details": True}}, "decoder_input_details"),
    ("/generate", {"inputs": "Hi", "parameters": {"top_n_tokens": 99, "details": True}}, "top_n_tokens"),
    ("/generate", {"inputs": "Hi", "parameters": {"colour": "red"}}, "parameters.colour"),
    ("/v1/chat/completions", {"messages": FRANCE, "logit_bias": {"1": 5}}, "logit_bias"),
    ("/v1/chat/completions", {"messages": FRANCE, "top_logprobs": 2}, "top_logprobs"),
    ("/v1/chat/completions", {"messages": FRANCE, "tool_choice": "required"}, "tool_choice"),
    ("/v1/chat/completions", {"messages": FRANCE, "functions": []}, "functions"),
    ("/v1/chat/completions", {"messages": FRANCE, "stream_options": {"include_usage": True}}, "stream_options"),
    ("/v1/completions", {"prompt": "Hi", "suffix": "!"}, "suffix"),
    ("/v1/completions", {"prompt": "Hi", "best_of": 3}, "best_of"),
    ("/v1/completions", {"prompt": "Hi", "echo": True, "stream": True}, "echo"),
    ("/v1/completions", {"prompt": []}, "prompt"),
    ("/v1/embeddings", {"input": "Hi", "encoding_format": "int8"}, "encoding_format"),
])
async def test_options_not_honoured_are_named(http, route, body, named):
    answer = await http.post(route, json=body)
    assert answer.status_code == 422 and answer.json()["error_type"] == "validation"
    assert named in answer.json()["error"]


async def test_decoder_input_details_refused_on_a_stream(http):
    body = {"inputs": "Hi", "parameters": {"decoder_input_details": True, "details": True}}
    async with http.stream("POST", "/generate_stream", json=body) as response:
        ((event, data),) = await sse(response)
    assert event == "error" and "decoder_input_details" in data
