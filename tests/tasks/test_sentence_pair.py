"""generate-sentence-pair: the system prompt per action and options, the sections parsed."""

from __future__ import annotations

import pytest

from .conftest import run_task

PAIR = "## Positive\nA feline rested on the rug.\n\n## Negative\nA cat food brand sued a rug maker."


def sent(mock) -> list[dict]:
    (request,) = mock.requests()
    return request["body"]["messages"]


@pytest.mark.parametrize("action, phrase", [
    ("paraphrase", "is a paraphrase of"),
    ("semantically-similar", "is semantically similar to"),
    ("query", "is a query that could be answered by"),
    ("answer", "is an answer to"),
])
async def test_positive_only(service, mock, action, phrase):
    mock.script([{"reply": "## Positive\nA feline rested on the rug."}])
    out = await run_task(service, "generate-sentence-pair", [{"anchor": "The cat sat on the mat."}],
                         {"action": action})
    (row,) = out["rows"]
    assert row["positive"] == "A feline rested on the rug." and "negative" not in row
    system, user = sent(mock)
    assert system["role"] == "system" and phrase in system["content"]
    assert "## Negative" not in system["content"] and "context" not in system["content"]
    assert user == {"role": "user", "content": "## Anchor\nThe cat sat on the mat."}


async def test_triplet_with_context_and_hard_negative(service, mock):
    mock.script([{"reply": "Here you go!\n\n" + PAIR}])
    out = await run_task(service, "generate-sentence-pair", [{"anchor": "The cat sat on the mat."}],
                         {"action": "paraphrase", "triplet": True, "hard_negative": True, "context": "Pets."})
    (row,) = out["rows"]
    assert row["positive"] == "A feline rested on the rug."
    assert row["negative"] == "A cat food brand sued a rug maker."
    system, user = sent(mock)
    assert "## Negative" in system["content"] and "mistaken" in system["content"]
    assert "Take into account the context" in system["content"]
    assert user["content"] == "## Context\nPets.\n\n## Anchor\nThe cat sat on the mat."


@pytest.mark.parametrize("reply, triplet, expected, missing", [
    ("A feline rested on the rug.", False, {"positive": None}, "'## Positive'"),    # no sections at all
    ("## Positive\nA feline rested on the rug.", True,                              # the negative is missing:
     {"positive": "A feline rested on the rug.", "negative": None}, "'## Negative'"),  # the positive is kept
    ("## Positive\n\n## Negative\nx", True, {"positive": None, "negative": "x"}, "'## Positive'"),  # an empty one
])
async def test_missing_sections_are_parse_errors(service, mock, reply, triplet, expected, missing):
    mock.script([{"reply": reply}])
    out = await run_task(service, "generate-sentence-pair", [{"anchor": "a"}],
                         {"action": "paraphrase", "triplet": triplet})
    (row,) = out["rows"]
    assert row["error"]["type"] == "parse_error" and missing in row["error"]["message"]
    assert {k: row[k] for k in expected} == expected and out["failed"] == 1


@pytest.mark.parametrize("params", [{}, {"action": "summarize"}, {"action": "query", "triplet": "maybe"}])
async def test_invalid_params_are_422_without_calls(service, mock, params):
    response = await service.post("/tasks/generate-sentence-pair", json={"rows": [{"anchor": "a"}], "params": params})
    assert response.status_code == 422
    assert mock.stats()["requests"] == 0
