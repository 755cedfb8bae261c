"""Cases from distilabel 1.5.3's own task tests (tests/unit/steps/tasks/), run over HTTP
against the mock LLM: a canned answer in, the columns distilabel gives out (issue 15)."""

from __future__ import annotations

import json

import pytest

from tests.service import mock_settings, serve

from .conftest import chat_prompts, run_task

TRIPLET = json.dumps({"S1": "A", "S2": "B", "S3": "C"})


def chat_bodies(mock) -> list[dict]:
    return [r["body"] for r in mock.requests() if r["route"] == "/v1/chat/completions"]


# ---- 1. answers written as Python literals ----

@pytest.mark.parametrize("category", ["text-retrieval", "text-matching-short", "text-matching-long",
                                      "text-classification"])
@pytest.mark.parametrize("flatten", [False, True])
async def test_task_list_as_a_python_literal(service, mock, category, flatten):
    mock.script([{"reply": "[ 'A', 'B', 'C' ]"}])
    out = await run_task(service, "embedding-task-generator", None, {"category": category, "flatten_tasks": flatten})
    assert out["failed"] == 0
    if flatten:
        assert [r["task"] for r in out["rows"]] == ["A", "B", "C"]
    else:
        assert [r["tasks"] for r in out["rows"]] == [["A", "B", "C"]]


@pytest.mark.parametrize("task, rows, params, reply, expected", [
    ("text-retrieval-data", [{"task": "A"}], {},
     "Here it is: {'user_query': 'A', 'positive_document': 'B', 'hard_negative_document': None}",
     {"user_query": "A", "positive_document": "B", "hard_negative_document": None}),
    ("text-classification-data", [{"task": "A"}], {},
     "```python\n{'input_text': 'A', 'label': 'B', 'misleading_label': \"it's C\"}\n```",
     {"input_text": "A", "label": "B", "misleading_label": "it's C"}),
    ("monolingual-triplet", None, {}, "{'S1': 'A', 'S2': 'B', 'S3': ('C',)}", {"S1": "A", "S2": "B", "S3": ["C"]}),
    ("bitext-retrieval", None, {"target_language": "French"}, TRIPLET, {"S1": "A", "S2": "B", "S3": "C"}),
])
async def test_json_answer_tasks_read_python_literals(service, mock, task, rows, params, reply, expected):
    mock.script([{"reply": reply}])
    out = await run_task(service, task, rows, params)
    (row,) = out["rows"]
    assert row["error"] is None and {k: row[k] for k in expected} == expected


# ---- 2. a seed drawn per request, and returned ----

async def test_single_row_requests_differ_and_the_seed_replays_one(service, mock):
    # cache off throughout: two requests drawing the same mutation send the same prompt,
    # which the call cache would answer; here every prompt must reach the mock
    mock.script([{"reply": "Prompt#: evolved"}])
    seeds = []
    for _ in range(8):
        out = await run_task(service, "evol-instruct", [{"instruction": "Say hi."}], cache=False)
        seeds.append(out["seed"])
    prompts = chat_prompts(mock.requests())
    assert len(set(seeds)) == 8 and len(set(prompts)) >= 2  # 8 times one mutation of 5: p = 1.3e-5
    mock.reset()
    mock.script([{"reply": "Prompt#: evolved"}])
    again = await run_task(service, "evol-instruct", [{"instruction": "Say hi."}], {"seed": seeds[3]}, cache=False)
    assert again["seed"] == seeds[3] and chat_prompts(mock.requests()) == [prompts[3]]


async def test_the_done_event_carries_the_seed(service, mock):
    mock.script([{"reply": "ok"}])
    response = await service.post("/tasks/text-generation", json={"rows": [{"instruction": "hi"}], "stream": True})
    done = response.text.split("event: done\ndata: ", 1)[1]
    assert isinstance(json.loads(done.split("\n", 1)[0])["seed"], int)
    out = await run_task(service, "text-generation", [{"instruction": "hi"}], {"seed": 5})
    assert out["seed"] == 5


# ---- 4. a partial triplet keeps what was written ----

@pytest.mark.parametrize("reply, triplet, expected, error", [
    ("## Positive\n\nThis is a paraphrase\n## Negative\n\nThis is not a paraphrase", True,
     {"positive": "This is a paraphrase", "negative": "This is not a paraphrase"}, None),
    ("## Positive\n\nThis is a paraphrase", True, {"positive": "This is a paraphrase", "negative": None},
     "'## Negative'"),
    ("## Positive\n\nThis is a paraphrase", False, {"positive": "This is a paraphrase"}, None),
    ("random", False, {"positive": None}, "'## Positive'"),
])
async def test_sentence_pair_format_output(service, mock, reply, triplet, expected, error):
    mock.script([{"reply": reply}])
    out = await run_task(service, "generate-sentence-pair", [{"anchor": "This is a unit test"}],
                         {"action": "paraphrase", "triplet": triplet})
    (row,) = out["rows"]
    assert {k: row[k] for k in expected} == expected and ("negative" in row) is triplet
    if error is None:
        assert row["error"] is None
    else:
        assert row["error"]["type"] == "parse_error" and error in row["error"]["message"]


# ---- 5. custom self-instruct criteria keep the answer format ----

async def test_custom_criteria_keep_the_line_format(service, mock):
    mock.script([{"reply": "What is A?\nExplain B."}])
    out = await run_task(service, "self-instruct", [{"input": "ctx"}],
                         {"criteria_for_query_generation": "Be odd.", "num_instructions": 2})
    assert out["rows"][0]["instructions"] == ["What is A?", "Explain B."]
    (prompt,) = chat_prompts(mock.requests())
    assert "# Criteria for the queries\nBe odd.\n\n# Answer format\nWrite one query per line, with no numbering" \
        in prompt


# ---- 6. magpie system prompts as {name: prompt} ----

async def test_magpie_named_system_prompts_drawn_uniformly(tgi_service, mock):
    mock.script([{"route": "/generate", "reply": "x"}])
    prompts = {"math": "You teach maths.", "poetry": "You write poems.", "cooking": "You cook."}
    out = await run_task(tgi_service, "magpie-generator", None,
                         {"num_rows": 12, "system_prompt": prompts, "include_system_prompt": True})
    rows = out["rows"]
    assert out["failed"] == 0 and all(prompts[r["system_prompt_key"]] == r["system_prompt"] for r in rows)
    assert len({r["system_prompt_key"] for r in rows}) >= 2


async def test_magpie_probabilities_summing_to_one(tgi_service, mock):
    mock.script([{"route": "/generate", "reply": "x"}])
    prompts = {"a": ["You are A.", 0.1], "b": ["You are B.", 0.2], "c": ["You are C.", 0.7]}  # 1.0000000000000002
    out = await run_task(tgi_service, "magpie-generator", None, {"num_rows": 4, "system_prompt": prompts})
    assert out["failed"] == 0 and all(r["system_prompt_key"] in prompts for r in out["rows"])


# ---- 7. mutation templates on the evol generators ----

@pytest.mark.parametrize("task", ["evol-instruct-generator", "evol-complexity-generator"])
async def test_evol_generators_take_mutation_templates(service, mock, task):
    templates = {"FRESH_START": "Seed words: <PROMPT>", "SHOUT": "Shout this: <PROMPT>"}
    mock.script([{"match": "Seed words:", "reply": "Prompt#: short"},
                 {"match": "Shout this:", "reply": "Prompt#: " + "long enough " * 3}])
    out = await run_task(service, task, None, {"num_instructions": 2, "min_length": 30, "max_length": 60,
                                               "max_iterations": 20, "mutation_templates": templates,
                                               "seed": 4})
    assert out["failed"] == 0 and all(r["instruction"].startswith("long enough") for r in out["rows"])
    prompts = chat_prompts(mock.requests())
    assert prompts[0].startswith("Seed words: ") and "Shout this: short" in prompts
    assert all(p.startswith(("Seed words: ", "Shout this: ")) for p in prompts)


@pytest.mark.parametrize("templates", [{}, {"X": "no placeholder"}])
async def test_evol_generator_bad_templates_are_422(service, mock, templates):
    response = await service.post("/tasks/evol-instruct-generator",
                                  json={"params": {"num_instructions": 1, "mutation_templates": templates}})
    assert response.status_code == 422 and mock.stats()["requests"] == 0


# ---- 8, 10. bitext: English by default, and the paper's guidelines ----

async def test_bitext_defaults_to_english_with_the_papers_guidelines(service, mock):
    mock.script([{"reply": TRIPLET}])
    out = await run_task(service, "bitext-retrieval", None, {"target_language": "French", "unit": "sentence",
                                                             "difficulty": "elementary school",
                                                             "high_score": "4", "low_score": "2.5"})
    assert out["rows"][0]["S3"] == "C"
    (prompt,) = chat_prompts(mock.requests())
    for value in ("English", "French", "sentence", "elementary school", "4", "2.5"):
        assert value in prompt  # as distilabel's test_prompt
    assert "translation errors" in prompt and "missing" in prompt and "extra" in prompt
    assert "share some words" in prompt and "varied in topic and length" in prompt


async def test_quality_scorer_reserves_n_plus_one(service, mock):
    mock.script([{"reply": "[1] Score: 1\n[2] Score: 3"}])
    out = await run_task(service, "quality-scorer", [{"instruction": "q", "responses": ["a", "b"]}])
    assert out["rows"][0]["scores"] == [1.0, 3.0]
    (prompt,) = chat_prompts(mock.requests())
    assert "Score a response 3 if it is already so well written that it cannot be improved" in prompt


# ---- 9. num_generations and group_generations ----

GENERATIONS = [
    ("self-instruct", [{"input": "ctx"}], {}, ["a\nb", "c"], "instructions", [["a", "b"], ["c"]]),
    ("complexity-scorer", [{"instructions": ["x", "y"]}], {}, ["[1] Score: 1\n[2] Score: 2", "[2] Score: 1"],
     "scores", [[1.0, 2.0], [None, 1.0]]),
    ("quality-scorer", [{"instruction": "q", "responses": ["x"]}], {}, ["[1] Score: 1", "[1] Score: 2"],
     "scores", [[1.0], [2.0]]),
    ("generate-sentence-pair", [{"anchor": "a"}], {"action": "query"}, ["## Positive\nq1", "## Positive\nq2"],
     "positive", ["q1", "q2"]),
    ("text-retrieval-data", [{"task": "t"}], {}, ['{"user_query": "u1"}', "{'user_query': 'u2'}"],
     "user_query", ["u1", "u2"]),
    ("short-text-matching-data", [{"task": "t"}], {}, ['{"input": "i1"}', '{"input": "i2"}'], "input", ["i1", "i2"]),
    ("long-text-matching-data", [{"task": "t"}], {}, ['{"input": "i1"}', '{"input": "i2"}'], "input", ["i1", "i2"]),
    ("text-classification-data", [{"task": "t"}], {}, ['{"label": "l1"}', '{"label": "l2"}'], "label", ["l1", "l2"]),
]


@pytest.mark.parametrize("task, rows, params, replies, column, values", GENERATIONS)
@pytest.mark.parametrize("group", [False, True])
async def test_num_generations_in_one_call(service, mock, task, rows, params, replies, column, values, group):
    mock.script([{"reply": replies}])
    out = await run_task(service, task, rows, {**params, "num_generations": 2, "group_generations": group})
    assert out["failed"] == 0
    if group:
        (row,) = out["rows"]
        assert row[column] == values
    else:
        assert [r[column] for r in out["rows"]] == values
    (body,) = chat_bodies(mock)  # one call with the backend's native `n`
    assert body["n"] == 2


async def test_an_unparsable_generation_fails_its_own_row(service, mock):
    mock.script([{"reply": ["[1] Score: 2", "no scores here"]}])
    row_in = {"instructions": ["x", "y"]}
    out = await run_task(service, "complexity-scorer", [row_in], {"num_generations": 2})
    good, bad = out["rows"]
    assert good["error"] is None and good["scores"] == [2.0, None]
    assert bad["error"]["type"] == "parse_error" and bad["scores"] == [None, None] and out["failed"] == 1

    mock.reset()
    mock.script([{"reply": ["[1] Score: 2", "no scores here"]}])
    out = await run_task(service, "complexity-scorer", [row_in], {"num_generations": 2, "group_generations": True})
    (row,) = out["rows"]
    assert row["scores"] == [[2.0, None], [None, None]]  # what was read is kept, the row flagged
    assert row["error"]["type"] == "parse_error" and "generation 2 of 2" in row["error"]["message"]


# ---- 11. the smaller ones ----

async def test_columns_as_a_string(service, mock):
    mock.script([{"reply": "ok"}])
    out = await run_task(service, "text-generation", [{"question": "Why?"}],
                         {"columns": "question", "template": "Q: {{ question }}"})
    assert out["rows"][0]["generation"] == "ok"
    assert chat_prompts(mock.requests()) == ["Q: Why?"]


async def test_user_templates_keep_block_newlines(service, mock):
    mock.script([{"reply": "ok"}])
    template = "Items:\n{% for item in items %}\n- {{ item }}\n{% endfor %}\nDone."
    await run_task(service, "text-generation", [{"items": ["a", "b"]}], {"columns": ["items"], "template": template})
    assert chat_prompts(mock.requests()) == ["Items:\n\n- a\n\n- b\n\nDone."]  # as jinja2's defaults render it


@pytest.mark.parametrize("task, rows, params, column, value", [
    ("complexity-scorer", [{"instructions": ["a", "b", "c"]}], {}, "scores", [None, None, None]),
    ("quality-scorer", [{"instruction": "q", "responses": ["a", "b"]}], {}, "scores", [None, None]),
    ("quality-scorer", [{"instruction": "q", "responses": ["a"]}], {"num_generations": 2, "group_generations": True},
     "scores", [[None], [None]]),
])
async def test_failed_scorers_give_a_null_per_item(service, mock, task, rows, params, column, value):
    mock.script([{"status": 400}])
    out = await run_task(service, task, rows, params)
    (row,) = out["rows"]
    assert row["error"]["type"] == "llm_error" and row[column] == value


@pytest.mark.parametrize("params, expected", [
    ({"n_turns": 2}, {"conversation": []}),
    ({"n_turns": 1}, {"instruction": None, "response": None}),
])
async def test_failed_magpie_rows(tgi_service, mock, params, expected):
    mock.script([{"route": "/generate", "status": 400}])
    out = await run_task(tgi_service, "magpie", [{}], params)
    (row,) = out["rows"]
    assert row["error"]["type"] == "llm_error" and {k: row[k] for k in expected} == expected


async def test_chat_generation_passes_content_parts_and_tool_messages(service, mock):
    mock.script([{"reply": "It is sunny."}])
    messages = [
        {"role": "user", "content": [{"type": "text", "text": "Weather in Paris?"}]},
        {"role": "assistant", "content": None,
         "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "weather", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
        {"role": "user", "content": [{"type": "text", "text": "So?"}]},
    ]
    out = await run_task(service, "chat-generation", [{"messages": messages}])
    assert out["rows"][0]["generation"] == "It is sunny."
    (body,) = chat_bodies(mock)
    assert body["messages"] == messages


@pytest.mark.parametrize("messages", [
    [{"role": "user", "content": None}],
    [{"role": "user", "content": ["not a part"]}],
    [{"role": "robot", "content": "hi"}],
])
async def test_chat_generation_still_checks_messages(service, mock, messages):
    response = await service.post("/tasks/chat-generation", json={"rows": [{"messages": messages}]})
    assert response.status_code == 422 and mock.stats()["requests"] == 0


@pytest.mark.parametrize("task, params", [("monolingual-triplet", {}), ("bitext-retrieval", {"target_language": "de"})])
async def test_triplets_in_one_call_with_native_n(service, mock, task, params):
    mock.script([{"reply": [TRIPLET, "{'S1': 'D', 'S2': 'E', 'S3': 'F'}", "no json"]}])
    out = await run_task(service, task, None, {**params, "num_generations": 3})
    assert [(r["S1"], r["error"] and r["error"]["type"]) for r in out["rows"]] == \
        [("A", None), ("D", None), (None, "parse_error")]
    (body,) = chat_bodies(mock)
    assert body["n"] == 3 and out["usage"]["output_tokens"] > 0


async def test_triplets_one_call_each_without_native_n(mock):
    """The TGI provider has no native `n`: one call per triplet, each with its own draws."""
    mock.script([{"reply": TRIPLET}])
    async with serve(mock_settings(mock.url, provider="tgi")) as client:
        out = await run_task(client, "monolingual-triplet", None, {"num_generations": 3, "seed": 1})
    assert out["failed"] == 0 and len(out["rows"]) == 3
    assert mock.stats()["by_route"]["/v1/chat/completions"] == 3
