"""evol-instruct, evol-complexity and evol-quality over HTTP against the scripted mock."""

from __future__ import annotations

import pytest

from tasks.evol import QUALITY_METHODS, REWRITE_METHODS
from tests.service import mock_settings, serve

from .conftest import chat_prompts, run_task


def chain(start: str, steps: list[str]) -> list[dict]:
    """Rules: the mutation prompt of each text answers with the next one (marker first)."""
    rules, current = [], start
    for nxt in steps:
        rules.append({"match": f"Prompt#:\n{current}\n\n#", "reply": f"Here you go.\n#Rewritten Prompt#:\n{nxt}\n"})
        current = nxt
    return rules


async def test_each_round_rewrites_the_previous_result(service, mock):
    mock.script(chain("Name a fruit.", ["E1", "E2", "E3"]))
    out = await run_task(service, "evol-instruct", [{"instruction": "Name a fruit."}], {"num_evolutions": 3})
    (row,) = out["rows"]
    assert row["evolved_instruction"] == "E3"
    assert "evolved_instructions" not in row and "answer" not in row
    assert row["error"] is None and row["metadata"]["llm_calls"] == 3
    prompts = chat_prompts(mock.requests())
    assert len(prompts) == 3
    for prompt, previous in zip(prompts, ["Name a fruit.", "E1", "E2"]):
        assert f"Prompt#:\n{previous}\n\n#" in prompt
        assert "#Rewritten Prompt#:" in prompt or "#Created Prompt#:" in prompt
    assert row["metadata"]["raw_input"] == [{"role": "user", "content": prompts[-1]}]
    assert row["metadata"]["raw_output"].endswith("E3\n")
    assert out["usage"]["input_tokens"] == row["metadata"]["usage"]["input_tokens"] > 0


async def test_store_evolutions_with_original_and_answers(service, mock):
    mock.script(chain("Q0", ["Q1", "Q2"]) + [{"match": "Q", "reply": "answer"}])
    out = await run_task(service, "evol-instruct", [{"instruction": "Q0"}],
                         {"num_evolutions": 2, "store_evolutions": True, "include_original_instruction": True,
                          "generate_answers": True})
    (row,) = out["rows"]
    assert row["evolved_instructions"] == ["Q0", "Q1", "Q2"]
    assert row["answers"] == ["answer"] * 3
    assert "evolved_instruction" not in row and "answer" not in row
    assert row["metadata"]["llm_calls"] == 5
    prompts = chat_prompts(mock.requests())
    assert prompts[2:] == ["Q0", "Q1", "Q2"]  # the answers: each kept instruction as a plain message
    assert row["metadata"]["raw_input"] == [{"role": "user", "content": "Q2"}]


async def test_store_evolutions_without_original(service, mock):
    mock.script(chain("Q0", ["Q1", "Q2"]))
    out = await run_task(service, "evol-instruct", [{"instruction": "Q0"}],
                         {"num_evolutions": 2, "store_evolutions": True})
    assert out["rows"][0]["evolved_instructions"] == ["Q1", "Q2"]


async def test_answers_answer_each_rows_final_instruction(service, mock):
    # distilabel 1.5.3 crashes here (store_evolutions off, generate_answers, several rows)
    rules = []
    for i in range(4):
        rules += chain(f"row{i}", [f"row{i}-a", f"row{i}-b"])
    rules += [{"match": f"row{i}-b", "reply": f"answer to row {i}"} for i in range(4)]
    mock.script(rules)
    rows = [{"instruction": f"row{i}"} for i in range(4)]
    out = await run_task(service, "evol-instruct", rows, {"num_evolutions": 2, "generate_answers": True})
    for i, row in enumerate(out["rows"]):
        assert row["instruction"] == f"row{i}"
        assert row["evolved_instruction"] == f"row{i}-b"
        assert row["answer"] == f"answer to row {i}"
        assert row["metadata"]["llm_calls"] == 3
    assert len(chat_prompts(mock.requests())) == 12
    assert sorted(p for p in chat_prompts(mock.requests()) if "Prompt#" not in p) == [f"row{i}-b" for i in range(4)]


def _mutation(prompt: str) -> str:
    if "#Created Prompt#:" in prompt:
        return "BREADTH"
    return next(name for name, method in REWRITE_METHODS.items() if method in prompt)


async def test_mutations_are_seeded_per_row_whatever_the_concurrency(mock):
    rules = []
    for i in range(8):
        rules += chain(f"R{i}", [f"R{i}.1", f"R{i}.2", f"R{i}.3"])
    rows = [{"instruction": f"R{i}"} for i in range(8)]
    runs = []
    for concurrency in (1, 8):
        mock.reset()
        mock.script(rules)
        async with serve(mock_settings(mock.url, max_concurrency=concurrency)) as client:
            out = await run_task(client, "evol-instruct", rows, {"num_evolutions": 3, "seed": 7})
        assert [r["evolved_instruction"] for r in out["rows"]] == [f"R{i}.3" for i in range(8)]
        runs.append(sorted(chat_prompts(mock.requests())))
    assert runs[0] == runs[1]
    used = {_mutation(p) for p in runs[0]}
    assert len(used) >= 3  # 24 draws from 5 mutations

    # another seed, other draws
    mock.reset()
    mock.script(rules)
    async with serve(mock_settings(mock.url)) as client:
        await run_task(client, "evol-instruct", rows, {"num_evolutions": 3, "seed": 8})
    assert sorted(chat_prompts(mock.requests())) != runs[0]


async def test_evol_complexity_never_uses_breadth(service, mock):
    mock.script([{"reply": "#Rewritten Prompt#: harder"}])
    rows = [{"instruction": f"q{i}"} for i in range(30)]
    # a fixed seed: with one drawn per request, 30 draws from 4 methods left one out in about
    # one run in 1,400
    out = await run_task(service, "evol-complexity", rows, {"seed": 3})
    assert out["failed"] == 0
    names = {_mutation(p) for p in chat_prompts(mock.requests())}
    assert names == set(REWRITE_METHODS)


async def test_custom_mutation_templates(service, mock):
    mock.script([{"reply": "Prompt#: done"}])
    templates = {"SHOUT": "Make this louder: <PROMPT>", "WHISPER": "Make this quieter: <PROMPT>"}
    await run_task(service, "evol-instruct", [{"instruction": f"say {i}"} for i in range(10)],
                   {"mutation_templates": templates})
    prompts = chat_prompts(mock.requests())
    assert all(p in {f"Make this {w}: say {i}" for w in ("louder", "quieter") for i in range(10)} for p in prompts)
    assert {p.split(":")[0] for p in prompts} == {"Make this louder", "Make this quieter"}


@pytest.mark.parametrize("params", [
    {"num_evolutions": 0},
    {"num_evolutions": "many"},
    {"mutation_templates": {"X": "no placeholder"}},
    {"mutation_templates": {}},
    {"unknown": 1},
])
async def test_invalid_params_are_422_without_calls(service, mock, params):
    response = await service.post("/tasks/evol-instruct", json={"rows": [{"instruction": "x"}], "params": params})
    assert response.status_code == 422, response.text
    assert mock.stats()["requests"] == 0


async def test_empty_evolution_is_a_parse_error_of_its_row_only(service, mock):
    mock.script([{"match": "bad", "reply": "#Rewritten Prompt#:"}, {"reply": "#Rewritten Prompt#: fine"}])
    out = await run_task(service, "evol-instruct", [{"instruction": "bad"}, {"instruction": "good"}])
    bad, good = out["rows"]
    assert bad["error"]["type"] == "parse_error" and bad["evolved_instruction"] is None
    assert good["error"] is None and good["evolved_instruction"] == "fine"
    assert out["failed"] == 1


async def test_llm_failure_marks_its_row_only(service, mock):
    mock.script([{"match": "doomed", "status": 400}, {"reply": "Prompt#: ok"}])
    out = await run_task(service, "evol-instruct", [{"instruction": "doomed"}, {"instruction": "fine"}],
                         {"num_evolutions": 2})
    doomed, fine = out["rows"]
    assert doomed["error"]["type"] == "llm_error" and doomed["evolved_instruction"] is None
    assert fine["error"] is None and fine["evolved_instruction"] == "ok"


async def test_evol_quality_rewrites_the_latest_response(service, mock):
    mock.script([
        {"match": "#Given Response#:\nfirst draft\n", "reply": "  second draft  "},
        {"match": "#Given Response#:\nsecond draft\n", "reply": "third draft"},
    ])
    out = await run_task(service, "evol-quality", [{"instruction": "Explain tides.", "response": "first draft"}],
                         {"num_evolutions": 2, "store_evolutions": True, "include_original_response": True})
    (row,) = out["rows"]
    assert row["evolved_responses"] == ["first draft", "second draft", "third draft"]
    assert row["metadata"]["llm_calls"] == 2
    prompts = chat_prompts(mock.requests())
    assert all("#Given Prompt#:\nExplain tides.\n" in p for p in prompts)
    assert all(p.rstrip().endswith("#Rewritten Response#:") for p in prompts)
    assert all(any(m in p for m in QUALITY_METHODS.values()) for p in prompts)


async def test_evol_quality_single_and_custom_templates(service, mock):
    mock.script([{"reply": "better"}])
    out = await run_task(service, "evol-quality", [{"instruction": "I <RESPONSE>", "response": "R <PROMPT>"}],
                         {"mutation_templates": {"ONLY": "P=<PROMPT> R=<RESPONSE>"}})
    assert out["rows"][0]["evolved_response"] == "better"
    assert chat_prompts(mock.requests()) == ["P=I <RESPONSE> R=R <PROMPT>"]
    bad = await service.post("/tasks/evol-quality", json={
        "rows": [{"instruction": "i", "response": "r"}], "params": {"mutation_templates": {"X": "<PROMPT> only"}}})
    assert bad.status_code == 422
