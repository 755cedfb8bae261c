"""Constrained decoding on the real embedded model: TGI's `grammar` (json and regex) on
/generate and /generate_stream, `response_format` on /v1/chat/completions, and rows with
and without a grammar sharing the batch's steps."""

from __future__ import annotations

import asyncio
import json
import re

import httpx
import jsonschema
import pytest

from sidecar.params import Grammar, InvalidRequest, SamplingParams

from .test_app import sse, templated

# an enum, a number range and a required nested object; closed objects and bounded strings
# so that a valid answer fits the token budget
PET = {
    "type": "object",
    "properties": {
        "kind": {"enum": ["cat", "dog", "bird"]},
        "age": {"type": "integer", "minimum": 1, "maximum": 20},
        "owner": {"type": "object", "properties": {"name": {"type": "string", "maxLength": 12}},
                  "required": ["name"], "additionalProperties": False},
    },
    "required": ["kind", "age", "owner"],
    "additionalProperties": False,
}
PET_PROMPT = [{"role": "user", "content": "Describe a pet and its owner as JSON."}]


@pytest.fixture
async def http(sidecar_url):
    async with httpx.AsyncClient(base_url=sidecar_url, timeout=300) as client:
        yield client


async def test_twenty_sampled_rows_follow_the_schema(http):
    """One request, n=20 at temperature 1: the 20 rows share the batch's steps and every
    answer is valid JSON of the schema."""
    r = await http.post("/v1/chat/completions", json={
        "messages": PET_PROMPT, "n": 20, "temperature": 1.0, "max_tokens": 96, "seed": 7,
        "response_format": {"type": "json_schema", "json_schema": {"name": "pet", "schema": PET}}})
    assert r.status_code == 200, r.text
    choices = r.json()["choices"]
    assert len(choices) == 20
    values = []
    for choice in choices:
        assert choice["finish_reason"] == "stop", choice
        value = json.loads(choice["message"]["content"])
        jsonschema.validate(value, PET)
        values.append(value)
    assert len({json.dumps(v, sort_keys=True) for v in values}) > 1  # sampled, not one answer 20 times


async def test_generate_with_a_json_grammar(http, engine):
    schema = {"type": "object", "properties": {"answer": {"enum": ["Paris", "Lyon"]}},
              "required": ["answer"], "additionalProperties": False}
    r = await http.post("/generate", json={"inputs": templated(engine), "parameters": {
        "max_new_tokens": 20, "details": True, "grammar": {"type": "json", "value": schema}}})
    assert r.status_code == 200, r.text
    body = r.json()
    assert json.loads(body["generated_text"]) in ({"answer": "Paris"}, {"answer": "Lyon"})
    assert body["details"]["finish_reason"] == "eos_token"


async def test_generate_stream_with_a_regex_grammar(http, engine):
    async with http.stream("POST", "/generate_stream", json={"inputs": templated(engine), "parameters": {
            "max_new_tokens": 20, "grammar": {"type": "regex", "value": "[A-Z][a-z]{2,8}, [0-9]{4}"}}}) as r:
        events = await sse(r)
    assert all(event is None for event, _ in events)
    last = json.loads(events[-1][1])
    assert re.fullmatch("[A-Z][a-z]{2,8}, [0-9]{4}", last["generated_text"]), last["generated_text"]
    assert "".join(json.loads(d)["token"]["text"] for _, d in events if not json.loads(d)["token"]["special"]) \
        == last["generated_text"]


async def test_chat_json_object_and_text_formats(http):
    r = await http.post("/v1/chat/completions", json={
        "messages": PET_PROMPT, "max_tokens": 40, "temperature": 0, "response_format": {"type": "json_object"}})
    content = r.json()["choices"][0]["message"]["content"]
    if r.json()["choices"][0]["finish_reason"] == "stop":
        assert isinstance(json.loads(content), dict)
    else:  # cut by max_tokens: still the start of an object
        assert content.startswith("{")
    r = await http.post("/v1/chat/completions", json={
        "messages": PET_PROMPT, "max_tokens": 5, "temperature": 0, "response_format": {"type": "text"}})
    assert r.status_code == 200


@pytest.mark.parametrize("grammar, message", [
    ({"type": "json", "value": {"type": "object", "properties": {"a": {"type": "no-such-type"}}}}, "invalid grammar"),
    ({"type": "regex", "value": "[unclosed"}, "invalid grammar"),
    ({"type": "regex", "value": 3}, "regex grammar"),
    ({"type": "json", "value": "not json"}, "JSON schema"),
    ({"type": "yaml", "value": "x"}, "type"),
])
async def test_an_invalid_grammar_is_a_422(http, engine, grammar, message):
    r = await http.post("/generate", json={"inputs": "hi", "parameters": {"max_new_tokens": 4, "grammar": grammar}})
    assert r.status_code == 422, r.text
    assert r.json()["error_type"] == "validation" and message in r.json()["error"]


async def test_rows_with_and_without_grammars_share_steps(engine):
    prompts = [templated(engine, [{"role": "user", "content": f"Tell me about pet number {i}."}]) for i in range(8)]
    constrained = SamplingParams(max_new_tokens=24, grammar=Grammar("regex", "(yes|no), [a-z ]+"))
    free = SamplingParams(max_new_tokens=24)
    steps = engine.batcher.steps
    results = await asyncio.gather(*(engine.generate(p, constrained if i % 2 else free) for i, p in enumerate(prompts)))
    shared = engine.batcher.steps - steps
    alone = sum(r.output_tokens - 1 for r in results)
    assert shared * 3 <= alone, (shared, alone)
    for r in results[1::2]:
        assert re.fullmatch("(yes|no)[a-z ,]*", r.text), r.text
    assert not any(re.fullmatch("(yes|no)[a-z ,]*", r.text) for r in results[::2])


async def test_grammars_are_compiled_once_and_refusals_reach_the_caller(engine):
    grammar = Grammar.json_schema({"type": "integer", "minimum": 3, "maximum": 7})
    first = await engine.generate("Pick a number: ", SamplingParams(max_new_tokens=4, grammar=grammar))
    assert 3 <= int(first.text) <= 7
    assert grammar in engine.grammars._compiled
    with pytest.raises(InvalidRequest, match="invalid grammar"):
        await engine.generate("x", SamplingParams(max_new_tokens=4, grammar=Grammar("regex", "(")))
