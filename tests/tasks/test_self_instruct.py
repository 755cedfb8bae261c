from __future__ import annotations

from .conftest import chat_prompts, run_task


async def test_self_instruct_prompt_and_parse(service, mock):
    mock.script([{"match": "solar panels", "reply": "1. How do solar panels work?\n\n- Explain inverters.\n"
                                                  "3) What is net metering?\nExtra line beyond the limit"}])
    out = await run_task(service, "self-instruct", [{"input": "A page about solar panels."}],
                         {"num_instructions": 3, "application_description": "An energy tutor"})
    (row,) = out["rows"]
    assert row["instructions"] == ["How do solar panels work?", "Explain inverters.", "What is net metering?"]
    assert row["input"] == "A page about solar panels."
    assert row["error"] is None and row["metadata"]["llm_calls"] == 1
    (prompt,) = chat_prompts(mock.requests())
    assert "Write 3 queries" in prompt
    assert "# AI application\nAn energy tutor" in prompt
    assert "# Context\nA page about solar panels." in prompt
    assert prompt.rstrip().endswith("# Output")
    assert "one query per line, with no numbering" in prompt  # the default criteria
    assert row["metadata"]["raw_input"] == [{"role": "user", "content": prompt}]


async def test_self_instruct_custom_criteria(service, mock):
    mock.script([{"reply": "q"}])
    await run_task(service, "self-instruct", [{"input": "x"}], {"criteria_for_query_generation": "Be odd."})
    (prompt,) = chat_prompts(mock.requests())
    assert "# Criteria for the queries\nBe odd." in prompt
    assert "# AI application\nAI assistant" in prompt


async def test_self_instruct_empty_answer_is_a_parse_error(service, mock):
    mock.script([{"reply": "   \n\n"}])
    out = await run_task(service, "self-instruct", [{"input": "x"}, {"input": "y"}])
    assert out["failed"] == 2
    assert all(r["error"]["type"] == "parse_error" and r["instructions"] is None for r in out["rows"])
