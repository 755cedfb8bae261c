"""Bodies the service refuses before any LLM call, and what it sends back whatever an
answer holds: NaN, Infinity and lone surrogates anywhere in a body are a 422; every byte
sent is JSON a strict parser accepts; a string over `max_field_chars` and output rows over
`max_output_rows_per_request` are a 413 naming them; k generations keep one raw output each."""

from __future__ import annotations

import json

import httpx
import pytest

from app.config import ServerConfig
from tests.service import mock_settings, serve

HEADERS = {"content-type": "application/json"}


def strict(text: str):
    def refuse(constant: str):
        raise AssertionError(f"{constant} is not JSON")
    data = json.loads(text, parse_constant=refuse)
    text.encode("utf-8")  # no lone surrogate either
    return data


BAD_BODIES = {
    "NaN in an extra column": b'{"rows": [{"instruction": "hi", "score": NaN}]}',
    "Infinity in an extra column": b'{"rows": [{"instruction": "hi", "score": -Infinity}]}',
    "temperature NaN": b'{"rows": [{"instruction": "hi"}], "llm": {"generation_kwargs": {"temperature": NaN}}}',
    "a lone surrogate": b'{"rows": [{"instruction": "hi \\ud800 there"}]}',
    "a lone surrogate in a key": b'{"rows": [{"instruction": "hi", "\\udfff": 1}]}',
    "bytes that are not UTF-8": b'{"rows": [{"instruction": "hi \xff"}]}',
}


@pytest.mark.parametrize("raw", BAD_BODIES.values(), ids=BAD_BODIES.keys())
@pytest.mark.parametrize("stream", [False, True])
async def test_non_json_values_are_a_422_before_any_call(service, mock, raw, stream):
    if stream:
        raw = raw.replace(b'{"rows"', b'{"stream": true, "rows"', 1)
    r = await service.post("/tasks/text-generation", content=raw, headers=HEADERS)
    assert r.status_code == 422, r.text
    detail = strict(r.text)["detail"]
    assert detail.startswith("body") and ("finite" in detail or "Unicode" in detail or "UTF-8" in detail)
    assert mock.stats()["requests"] == 0


@pytest.mark.parametrize("raw", [b'{"rows": [{"instruction": "hi", "score": [1, 1e999]}]}',
                                 b'{"rows": [{"instruction": "hi"}], "params": {"seed": 1e999}}',
                                 b'{"rows": [{"instruction": "hi"}], "llm": {"generation_kwargs": {"temperature": -1E400}}}',
                                 b'{"rows": [{"instruction": "hi"}], "llm": {"generation_kwargs": {"repetition_penalty": 1e999}}}'])
async def test_an_exponent_that_overflows_is_a_422_before_any_call(service, mock, raw):
    r = await service.post("/tasks/text-generation", content=raw, headers=HEADERS)
    assert r.status_code == 422, r.text
    strict(r.text)
    assert mock.stats()["requests"] == 0


async def test_the_words_nan_and_infinity_in_strings_are_fine(service, mock):
    raw = b'{"rows": [{"instruction": "NaN and Infinity, 1e999 and \\ud83d\\ude00"}]}'
    r = await service.post("/tasks/text-generation", content=raw, headers=HEADERS)
    assert r.status_code == 200, r.text
    assert strict(r.text)["rows"][0]["generation"] == "Echo: NaN and Infinity, 1e999 and \U0001F600"


async def test_answers_with_non_json_values_are_sent_as_valid_json(service, mock):
    # an LLM answer parsed by json.loads may hold Infinity; a reply may hold a lone surrogate
    rules = [{"match": "doc", "reply": '{"user_query": Infinity, "positive_document": "p", '
                                       '"hard_negative_document": NaN}'},
             {"match": "surrogate", "reply": "half \ud800 a pair"}]
    httpx.post(mock.url + "/_mock/script", content=json.dumps(rules)).raise_for_status()  # ASCII escapes
    body = {"rows": [{"task": "doc"}]}
    r = await service.post("/tasks/text-retrieval-data", json=body)
    assert r.status_code == 200, r.text
    row = strict(r.text)["rows"][0]
    assert row["user_query"] is None and row["positive_document"] == "p"
    async with service.stream("POST", "/tasks/text-retrieval-data", json={**body, "stream": True}) as s:
        events = [line for line in [line async for line in s.aiter_lines()] if line.startswith("data:")]
    assert strict(events[0].removeprefix("data:"))["row"]["user_query"] is None

    r = await service.post("/tasks/text-generation", json={"rows": [{"instruction": "surrogate"}]})
    assert r.status_code == 200
    assert strict(r.text)["rows"][0]["generation"] == "half \ufffd a pair"


async def test_field_size_output_rows_and_json_body_size_are_limited(mock):
    server = ServerConfig(max_field_chars=1000, max_output_rows_per_request=100, max_json_body_bytes=64 * 1024)
    async with serve(mock_settings(mock.url, server=server)) as client:
        rows = [{"instruction": "x" * 900}] * 80  # every string fine, the body over max_json_body_bytes
        r = await client.post("/tasks/text-generation", json={"rows": rows})
        assert r.status_code == 413 and "max_json_body_bytes" in r.json()["detail"]
        r = await client.post("/tasks/text-generation", json={"rows": [{"instruction": "ok"}, {"instruction": "x" * 1001}]})
        assert r.status_code == 413 and "rows[1].instruction" in r.json()["detail"]
        r = await client.post("/tasks/text-generation", json={"rows": [{"instruction": "ok"}],
                                                             "params": {"system_prompt": "s" * 1001}})
        assert r.status_code == 413 and "params.system_prompt" in r.json()["detail"]
        rows = [{"instruction": f"row {i}"} for i in range(30)]
        r = await client.post("/tasks/text-generation", json={"rows": rows, "params": {"num_generations": 4}})
        assert r.status_code == 413
        assert "30 x 4 = 120" in r.json()["detail"] and "num_generations" in r.json()["detail"]
        assert mock.stats()["requests"] == 0
        r = await client.post("/tasks/text-generation", json={"rows": rows[:25], "params": {"num_generations": 4}})
        assert r.status_code == 200


async def test_k_generations_keep_one_raw_output_each(service, mock):
    mock.script([{"reply": ["one", "two", "three"]}])
    r = await service.post("/tasks/text-generation",
                           json={"rows": [{"instruction": "hi"}], "params": {"num_generations": 3}})
    rows = r.json()["rows"]
    assert [row["metadata"]["raw_output"] for row in rows] == [row["generation"] for row in rows]
    assert sorted(row["generation"] for row in rows) == ["one", "three", "two"]
    r = await service.post("/tasks/text-generation", json={
        "rows": [{"instruction": "hi"}], "params": {"num_generations": 3, "group_generations": True}})
    (row,) = r.json()["rows"]
    assert row["metadata"]["raw_output"] == row["generation"]  # the grouped row: all three, once
