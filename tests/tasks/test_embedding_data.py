"""The embedding-data tasks (arXiv 2401.00368): prompts with sampled attributes, JSON answers."""

from __future__ import annotations

import json

import pytest

from tasks.embedding_data import CLARITIES, DIFFICULTIES, NUM_WORDS, QUERY_LENGTHS, QUERY_TYPES
from tests.service import mock_settings, serve

from .conftest import chat_prompts, run_task

TASK_LIST = json.dumps(["Find recipes for a dish.", "Match a claim to evidence.", "Retrieve case law."])


async def test_task_generator_lists(service, mock):
    mock.script([{"reply": f"```json\n{TASK_LIST}\n```"}])
    out = await run_task(service, "embedding-task-generator", None,
                         {"category": "text-classification", "num_generations": 2})
    assert len(out["rows"]) == 2
    assert all(r["tasks"] == json.loads(TASK_LIST) and "task" not in r for r in out["rows"])
    prompts = chat_prompts(mock.requests())
    assert len(prompts) == 2 and "text classification tasks" in prompts[0] and "JSON list" in prompts[0]


async def test_task_generator_flattened(service, mock):
    mock.script([{"reply": TASK_LIST, "times": 1}, {"reply": "no list here"}])
    out = await run_task(service, "embedding-task-generator", None,
                         {"category": "text-retrieval", "flatten_tasks": True, "num_generations": 2})
    ok = [r for r in out["rows"] if r["error"] is None]
    bad = [r for r in out["rows"] if r["error"] is not None]
    assert sorted(r["task"] for r in ok) == sorted(json.loads(TASK_LIST))
    assert len(bad) == 1 and bad[0]["error"]["type"] == "parse_error" and bad[0]["task"] is None
    assert all("tasks" not in r for r in out["rows"])
    assert out["failed"] == 1 and len(out["rows"]) == 4


@pytest.mark.parametrize("category, phrase", [
    ("text-retrieval", "text retrieval tasks"),
    ("text-matching-short", "very short"),
    ("text-matching-long", "query is a long document"),
])
async def test_task_generator_categories(service, mock, category, phrase):
    mock.script([{"reply": '["t"]'}])
    await run_task(service, "embedding-task-generator", None, {"category": category})
    assert phrase in chat_prompts(mock.requests())[0]


@pytest.mark.parametrize("reply, expected", [
    ('{"user_query": "q", "positive_document": "p", "hard_negative_document": "n"}',
     {"user_query": "q", "positive_document": "p", "hard_negative_document": "n"}),
    ('Sure!\n```json\n{"user_query": "q", "positive_document": null, "hard_negative_document": true}\n```',
     {"user_query": "q", "positive_document": None, "hard_negative_document": True}),
    ('{"user_query": "q", "unexpected": 1}',  # missing keys are null
     {"user_query": "q", "positive_document": None, "hard_negative_document": None}),
])
async def test_text_retrieval_answers(service, mock, reply, expected):
    mock.script([{"reply": reply}])
    out = await run_task(service, "text-retrieval-data", [{"task": "Find recipes."}])
    row = out["rows"][0]
    assert row["error"] is None
    assert {k: row[k] for k in expected} == expected and "unexpected" not in row


@pytest.mark.parametrize("reply", ["no json", "{'user_query': __import__('os').getcwd()}", "[1, 2]",
                                   "{'user_query': {1, 2}}"])
async def test_text_retrieval_garbage_is_a_parse_error(service, mock, reply):
    mock.script([{"reply": reply}])
    out = await run_task(service, "text-retrieval-data", [{"task": "Find recipes."}])
    row = out["rows"][0]
    assert row["error"]["type"] == "parse_error" and row["user_query"] is None


async def test_text_retrieval_attributes_sampled_or_given(service, mock):
    mock.script([{"reply": "{}"}])
    rows = [{"task": f"task {i}"} for i in range(12)]
    await run_task(service, "text-retrieval-data", rows, {"language": "Spanish"})
    prompts = chat_prompts(mock.requests())
    assert all("in Spanish" in p for p in prompts)
    for values in (QUERY_TYPES, QUERY_LENGTHS, DIFFICULTIES, CLARITIES):
        seen = {v for p in prompts for v in values if f" {v}" in p}
        assert len(seen) >= 2, values  # drawn per row
    assert {n for p in prompts for n in NUM_WORDS if f"at least {n} words" in p}

    mock.reset()
    mock.script([{"reply": "{}"}])
    fixed = {"query_type": "common", "query_length": "5 to 15 words", "difficulty": "PhD", "clarity": "ambiguous",
             "num_words": 300}
    await run_task(service, "text-retrieval-data", rows[:3], fixed)
    for p in chat_prompts(mock.requests()):
        assert "should be common, 5 to 15 words, ambiguous" in p
        assert "at least 300 words" in p and "a PhD level" in p


async def test_sampling_is_seeded_whatever_the_concurrency(mock):
    rows = [{"task": f"task {i}"} for i in range(10)]
    seen = []
    for concurrency in (1, 8):
        mock.reset()
        mock.script([{"reply": "{}"}])
        async with serve(mock_settings(mock.url, max_concurrency=concurrency)) as client:
            await run_task(client, "text-classification-data", rows, {"seed": 5})
        seen.append(sorted(chat_prompts(mock.requests())))
    assert seen[0] == seen[1]


@pytest.mark.parametrize("task, reply, outputs, phrase", [
    ("short-text-matching-data", '{"input": "i", "positive_document": "p"}', ("input", "positive_document"),
     "under 50 words"),
    ("long-text-matching-data", '{"input": "i", "positive_document": "p"}', ("input", "positive_document"),
     "at least 300 words"),
    ("text-classification-data", '{"input_text": "t", "label": "pos", "misleading_label": "neg"}',
     ("input_text", "label", "misleading_label"), "misleading_label"),
])
async def test_per_task_examples(service, mock, task, reply, outputs, phrase):
    mock.script([{"reply": reply}])
    out = await run_task(service, task, [{"task": "Match questions."}], {"language": "German"})
    row = out["rows"][0]
    assert all(row[o] is not None for o in outputs) and row["task"] == "Match questions."
    (prompt,) = chat_prompts(mock.requests())
    assert "Match questions." in prompt and phrase in prompt and "German" in prompt


async def test_monolingual_triplet(service, mock):
    mock.script([{"reply": '{"S1": "a", "S2": "b", "S3": "c"}'}])
    out = await run_task(service, "monolingual-triplet", None,
                         {"language": "French", "unit": "sentence", "high_score": 4.5, "low_score": "3",
                          "num_generations": 3})
    assert [(r["S1"], r["S2"], r["S3"]) for r in out["rows"]] == [("a", "b", "c")] * 3
    prompts = chat_prompts(mock.requests())
    assert len(prompts) == 1  # one call with the backend's native `n`
    assert all("in French" in p and "score of 4.5" in p and "score of 3." in p and "three sentences" in p
               for p in prompts)


async def test_bitext_retrieval(service, mock):
    mock.script([{"reply": '{"S1": "hello", "S2": "hola", "S3": "ola"}'}])
    out = await run_task(service, "bitext-retrieval", None, {"source_language": "English",
                                                             "target_language": "Spanish"})
    assert out["rows"][0]["S2"] == "hola"
    (prompt,) = chat_prompts(mock.requests())
    assert "one in English and two in Spanish" in prompt


@pytest.mark.parametrize("task, params", [
    ("bitext-retrieval", {"source_language": "English"}),  # target_language is required
    ("bitext-retrieval", {"target_language": "Spanish", "source_language": ""}),
    ("monolingual-triplet", {"high_score": 3}),
    ("monolingual-triplet", {"unit": "chapter"}),
    ("embedding-task-generator", {}),  # category is required
    ("embedding-task-generator", {"category": "clustering"}),
])
async def test_invalid_params_are_422_without_calls(service, mock, task, params):
    response = await service.post(f"/tasks/{task}", json={"params": params})
    assert response.status_code == 422
    assert mock.stats()["requests"] == 0


async def test_text_retrieval_bad_param_is_422(service, mock):
    response = await service.post("/tasks/text-retrieval-data",
                                  json={"rows": [{"task": "t"}], "params": {"num_words": 42}})
    assert response.status_code == 422
    assert mock.stats()["requests"] == 0
