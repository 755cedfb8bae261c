"""complexity-scorer and quality-scorer: prompts, and scores read by `[i]` index."""

from __future__ import annotations

import pytest

from .conftest import chat_prompts, run_task


async def test_complexity_scorer(service, mock):
    mock.script([{"reply": "Sure, here are the scores:\n[1] Score: 1\n[2] Score: 3\n[3] Score: 2"}])
    rows = [{"instructions": ["Say hi.", "Prove Fermat's last theorem.", "Sort a list."]}]
    out = await run_task(service, "complexity-scorer", rows)
    (row,) = out["rows"]
    assert row["scores"] == [1.0, 3.0, 2.0]  # the preamble line shifts nothing
    assert row["instructions"] == rows[0]["instructions"] and row["metadata"]["llm_calls"] == 1
    (prompt,) = chat_prompts(mock.requests())
    assert "score from 1 to 3" in prompt and "Score a question 4" in prompt
    assert "[1] Score: 1\n[2] Score: 2\n[3] Score: 3" in prompt
    assert prompt.rstrip().endswith("[1] Say hi.\n[2] Prove Fermat's last theorem.\n[3] Sort a list.")


async def test_quality_scorer(service, mock):
    mock.script([{"reply": "[2] score: 4.5\n[1] Score: 2"}])
    rows = [{"instruction": "What is 2+2?", "responses": ["5", "4", "four, of course"]}]
    out = await run_task(service, "quality-scorer", rows)
    assert out["rows"][0]["scores"] == [2.0, 4.5, None]  # unmatched position: null
    assert out["failed"] == 0
    (prompt,) = chat_prompts(mock.requests())
    assert "#Question#:\nWhat is 2+2?" in prompt
    assert "#Response List#:\n[1] 5\n[2] 4\n[3] four, of course" in prompt
    assert "helpfulness, relevance, accuracy, depth, creativity" in prompt


async def test_no_scores_is_a_parse_error(service, mock):
    mock.script([{"reply": "They are all equally complex."}])
    out = await run_task(service, "complexity-scorer", [{"instructions": ["a", "b"]}])
    (row,) = out["rows"]
    assert row["scores"] == [None, None] and row["error"]["type"] == "parse_error"  # as distilabel's


@pytest.mark.parametrize("task, row", [
    ("complexity-scorer", {"instructions": "not a list"}),
    ("complexity-scorer", {"instructions": []}),
    ("complexity-scorer", {"instructions": ["a", 2]}),
    ("complexity-scorer", {}),
    ("quality-scorer", {"instruction": "q", "responses": "r"}),
    ("quality-scorer", {"responses": ["r"]}),
])
async def test_bad_rows_are_422_without_calls(service, mock, task, row):
    response = await service.post(f"/tasks/{task}", json={"rows": [{"instructions": ["ok"], "instruction": "q",
                                                                    "responses": ["r"]}, row]})
    assert response.status_code == 422
    assert "rows[1]" in response.json()["detail"]
    assert mock.stats()["requests"] == 0
