"""Structured output over HTTP against the mock LLM: each provider sends the schema in its
native form (OpenAI and Mistral `response_format` json_schema, TGI `grammar` /
`response_format` json), the answer is validated on return, `generation_parsed` holds the
value and an answer that does not validate is a parse_error with its text kept."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.service import mock_settings, serve

from .conftest import run_task

# What the mock answers under structured output: {"echo": <last user message>, "format": ...}
ECHO_SCHEMA = {
    "title": "Echo answer",
    "type": "object",
    "properties": {"echo": {"type": "string"}, "format": {"type": "object"}},
    "required": ["echo", "format"],
}
PET_SCHEMA = {
    "type": "object",
    "properties": {"kind": {"enum": ["cat", "dog"]}, "age": {"type": "integer", "minimum": 0, "maximum": 30}},
    "required": ["kind", "age"],
    "additionalProperties": False,
}


def _structured_requests(requests: list[dict]) -> list[dict]:
    return [r for r in requests if r["route"] in ("/v1/chat/completions", "/generate")]


@pytest.mark.parametrize("provider, sent", [
    ("openai", lambda body: body["response_format"]),
    ("mistral", lambda body: body["response_format"]),
    ("tgi", lambda body: body["response_format"]),
])
async def test_each_provider_sends_the_schema_natively(mock, provider, sent):
    async with serve(mock_settings(mock.url, provider=provider)) as client:
        body = await run_task(client, "text-generation", [{"instruction": "hi"}],
                              {"structured_output": {"schema": ECHO_SCHEMA}})
    (row,) = body["rows"]
    assert row["error"] is None
    (request,) = _structured_requests(await mock.arequests())
    expected = ({"type": "json", "value": ECHO_SCHEMA} if provider == "tgi" else
                {"type": "json_schema", "json_schema": {"name": "Echo_answer", "schema": ECHO_SCHEMA}})
    assert sent(request["body"]) == expected
    # the output column holds the JSON text, generation_parsed its value
    assert json.loads(row["generation"]) == row["generation_parsed"]
    assert row["generation_parsed"] == {"echo": "hi", "format": expected}


async def test_tgi_raw_completion_sends_the_grammar(mock, tgi_service):
    """magpie-style raw completion is not structured, but /generate carries the grammar
    when kwargs have one: checked through the client's payload builder on the real route."""
    from llm_clients.base import GenerationKwargs

    client = tgi_service.app.state.synth.backends["mock"]
    completion = await client.complete("raw prompt", GenerationKwargs().with_json_schema(ECHO_SCHEMA))
    (request,) = _structured_requests(await mock.arequests())
    assert request["body"]["parameters"]["grammar"] == {"type": "json", "value": ECHO_SCHEMA}
    assert json.loads(completion.text)["echo"] == "raw prompt"


async def test_without_structured_output_nothing_is_sent(mock, service):
    body = await run_task(service, "text-generation", [{"instruction": "hi"}])
    (request,) = _structured_requests(await mock.arequests())
    assert "response_format" not in request["body"]
    assert "generation_parsed" not in body["rows"][0]
    assert body["rows"][0]["generation"] == "Echo: hi"


@pytest.mark.parametrize("reply, message", [
    ('{"kind": "cow", "age": 3}', "at kind"),      # not in the enum
    ('{"kind": "cat", "age": 31}', "at age"),      # out of range
    ('{"kind": "cat"}', "'age' is a required property"),
    ('{"kind": "cat", "age": 3', "not valid JSON"),  # cut short
])
async def test_an_answer_that_does_not_validate_is_a_parse_error(mock, service, reply, message):
    await mock.ascript([{"match": "pet", "reply": reply}])
    body = await run_task(service, "chat-generation", [{"messages": [{"role": "user", "content": "a pet"}]}],
                          {"structured_output": {"schema": PET_SCHEMA}})
    (row,) = body["rows"]
    assert row["error"]["type"] == "parse_error"
    assert message in row["error"]["message"]
    assert row["generation"] == reply  # paid text is kept
    assert row["generation_parsed"] is None


async def test_generations_are_validated_one_by_one(mock, service):
    await mock.ascript([{"match": "pet", "reply": ['{"kind": "cat", "age": 2}', '{"kind": "cat", "age": -1}']}])
    params = {"structured_output": {"schema": PET_SCHEMA}, "num_generations": 2}
    body = await run_task(service, "text-generation", [{"instruction": "a pet"}], params)
    good, bad = sorted(body["rows"], key=lambda r: r["error"] is not None)
    assert good["error"] is None and good["generation_parsed"] == {"kind": "cat", "age": 2}
    assert bad["error"]["type"] == "parse_error" and bad["generation_parsed"] is None

    body = await run_task(service, "text-generation", [{"instruction": "a pet"}], {**params, "group_generations": True})
    (row,) = body["rows"]
    assert row["error"]["type"] == "parse_error" and "generation 2 of 2" in row["error"]["message"]
    assert row["generation_parsed"] == [{"kind": "cat", "age": 2}, None]
    assert len(row["generation"]) == 2


async def test_an_invalid_schema_is_a_422(service):
    body = await run_task(service, "text-generation", [{"instruction": "hi"}],
                          {"structured_output": {"schema": {"type": "no-such-type"}}}, status=422)
    assert "schema" in json.dumps(body)


async def test_file_defined_tasks_take_structured_output(mock, tmp_path: Path):
    (tmp_path / "pet.toml").write_text(
        'name = "pet-card"\ninputs = ["animal"]\noutputs = ["kind", "age"]\n'
        'template = "Describe {{ animal }} as JSON."\nparser = "json"\n')
    await mock.ascript([{"match": "Describe", "reply": '{"kind": "dog", "age": 4}'}])
    settings = mock_settings(mock.url)
    settings.tasks.custom_dir = tmp_path
    async with serve(settings) as client:
        body = await run_task(client, "pet-card", [{"animal": "a dog"}], {"structured_output": {"schema": PET_SCHEMA}})
    (row,) = body["rows"]
    assert row["error"] is None
    assert (row["kind"], row["age"], row["generation_parsed"]) == ("dog", 4, {"kind": "dog", "age": 4})
    (request,) = _structured_requests(await mock.arequests())
    assert request["body"]["response_format"]["json_schema"]["schema"] == PET_SCHEMA


async def test_the_local_backend_constrains_decoding():
    """The `local` provider on the real embedded model: sampled answers follow the schema
    (SmolLM2 alone would not write this JSON)."""
    from app.config import BackendConfig, Settings

    settings = Settings(backends={"local": BackendConfig(provider="local", max_concurrency=4, timeout_s=300)})
    async with serve(settings) as client:
        body = await run_task(client, "text-generation", [{"instruction": "Describe a pet as JSON."}],
                              {"structured_output": {"schema": PET_SCHEMA}, "num_generations": 3},
                              llm={"generation_kwargs": {"max_new_tokens": 30, "temperature": 1.0}})
    assert len(body["rows"]) == 3
    for row in body["rows"]:
        assert row["error"] is None, row
        assert row["generation_parsed"]["kind"] in ("cat", "dog") and 0 <= row["generation_parsed"]["age"] <= 30
        assert json.loads(row["generation"]) == row["generation_parsed"]


# ---- use_default_structured_output (distilabel's get_structured_output schemas) ----

SCORES_SCHEMA = {"properties": {"scores": {"items": {"type": "integer"}, "title": "Scores", "type": "array"}},
                 "required": ["scores"], "type": "object"}


@pytest.mark.parametrize("task, row, title", [
    ("complexity-scorer", {"instructions": ["a", "b"]}, "SchemaComplexityScorer"),
    ("quality-scorer", {"instruction": "q", "responses": ["a", "b"]}, "SchemaQualityScorer"),
])
@pytest.mark.parametrize("reply, scores, error", [
    ('{"scores": [1, 2]}', [1, 2], None),
    ('{"scores": [3]}', [3, None], "1 scores for 2"),          # the scores given are kept
    ('{"scores": ["high", 2]}', [None, None], "at scores/0"),  # not integers
    ("[1] Score: 1\n[2] Score: 2", [None, None], "not valid JSON"),
])
async def test_scorers_default_structured_output(mock, service, task, row, title, reply, scores, error):
    await mock.ascript([{"reply": reply}])
    body = await run_task(service, task, [row], {"use_default_structured_output": True})
    (out,) = body["rows"]
    assert out["scores"] == scores
    assert (out["error"] or {}).get("type") == ("parse_error" if error else None)
    if error:
        assert error in out["error"]["message"]
    (request,) = _structured_requests(await mock.arequests())
    assert request["body"]["response_format"] == {
        "type": "json_schema", "json_schema": {"name": title, "schema": {**SCORES_SCHEMA, "title": title}}}


@pytest.mark.parametrize("triplet, reply, outputs, error", [
    (False, '{"positive": "A paraphrase."}', {"positive": "A paraphrase."}, None),
    (True, '{"positive": "Same.", "negative": "Other."}', {"positive": "Same.", "negative": "Other."}, None),
    (True, '{"positive": "Same."}', {"positive": None, "negative": None}, "'negative' is a required property"),
])
async def test_sentence_pair_default_structured_output(mock, service, triplet, reply, outputs, error):
    await mock.ascript([{"reply": reply}])
    body = await run_task(service, "generate-sentence-pair", [{"anchor": "A sentence."}],
                          {"action": "paraphrase", "triplet": triplet, "use_default_structured_output": True})
    (out,) = body["rows"]
    assert {c: out[c] for c in outputs} == outputs
    assert (out["error"] or {}).get("message", "").find(error or "") >= 0 and bool(out["error"]) == bool(error)
    (request,) = _structured_requests(await mock.arequests())
    columns = ["positive", "negative"] if triplet else ["positive"]
    assert request["body"]["response_format"]["json_schema"]["schema"] == {
        "properties": {c: {"title": c.capitalize(), "type": "string"} for c in columns},
        "required": columns, "title": "Schema", "type": "object"}


async def test_default_structured_output_is_off_by_default(mock, service):
    await mock.ascript([{"reply": "[1] Score: 4\n[2] Score: 5"}])
    body = await run_task(service, "complexity-scorer", [{"instructions": ["a", "b"]}])
    assert body["rows"][0]["scores"] == [4, 5]
    (request,) = _structured_requests(await mock.arequests())
    assert "response_format" not in request["body"]
