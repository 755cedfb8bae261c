"""magpie and magpie-generator against the mock's TGI routes: raw completions of the
chat-templated conversation plus the pre-query template, stopping at the end of turn."""

from __future__ import annotations

import pytest

from tasks.magpie import Conversation, chatml, draw_system_prompt, end_of_turn

from .conftest import run_task

USER_OPEN = "<|im_start|>user\n"
EOT = "<|im_end|>"


def generate_requests(mock) -> list[dict]:
    return [r["body"] for r in mock.requests() if r["route"] == "/generate"]


async def test_one_turn(tgi_service, mock):
    mock.script([{"route": "/generate", "match": "What is a prime?", "reply": "A number with two divisors."},
                 {"route": "/generate", "reply": "What is a prime?"}])
    out = await run_task(tgi_service, "magpie", [{"system_prompt": "You teach maths."}])
    (row,) = out["rows"]
    assert row["instruction"] == "What is a prime?" and row["response"] == "A number with two divisors."
    assert row["system_prompt"] == "You teach maths."  # an input column: kept as given
    assert "conversation" not in row and row["error"] is None
    assert row["metadata"]["llm_calls"] == 2
    user_call, reply_call = generate_requests(mock)
    assert user_call["inputs"] == f"<|im_start|>system\nYou teach maths.{EOT}\n{USER_OPEN}"
    assert reply_call["inputs"] == (f"<|im_start|>system\nYou teach maths.{EOT}\n{USER_OPEN}What is a prime?{EOT}\n"
                                    "<|im_start|>assistant\n")
    assert EOT in user_call["parameters"]["stop"] and EOT in reply_call["parameters"]["stop"]
    assert row["metadata"]["raw_input"] == reply_call["inputs"]
    assert mock.stats()["by_route"]["/chat_tokenize"] == 1  # the template, rendered once per row


async def test_multi_turn_conversation(tgi_service, mock):
    mock.script([{"route": "/generate", "reply": ["Q0", "A0", "Q1", "A1", "Q2"]}])
    out = await run_task(tgi_service, "magpie", [{}], {"n_turns": 3, "end_with_user": True,
                                                       "include_system_prompt": True})
    (row,) = out["rows"]
    conversation = row["conversation"]
    assert conversation[0]["role"] == "system" and "multi-round conversation" in conversation[0]["content"]
    assert [(m["role"], m["content"]) for m in conversation[1:]] == [
        ("user", "Q0"), ("assistant", "A0"), ("user", "Q1"), ("assistant", "A1"), ("user", "Q2")]
    assert row["system_prompt"] == conversation[0]["content"]
    assert row["metadata"]["llm_calls"] == 5  # no reply to the last user turn
    prompts = [b["inputs"] for b in generate_requests(mock)]
    # each prompt continues the previous one with what the model wrote
    assert prompts[2].endswith(f"{USER_OPEN}Q0{EOT}\n<|im_start|>assistant\nA0{EOT}\n{USER_OPEN}")
    assert prompts[4].endswith(f"A1{EOT}\n{USER_OPEN}")
    assert prompts[3].endswith(f"Q1{EOT}\n<|im_start|>assistant\n")


async def test_multi_turn_drops_the_system_prompt_by_default(tgi_service, mock):
    mock.script([{"route": "/generate", "reply": ["Q0", "A0", "Q1", "A1"]}])
    out = await run_task(tgi_service, "magpie", [{}], {"n_turns": 2})
    (row,) = out["rows"]
    assert [m["role"] for m in row["conversation"]] == ["user", "assistant", "user", "assistant"]
    assert "system_prompt" not in row


async def test_only_instruction(tgi_service, mock):
    mock.script([{"route": "/generate", "reply": "  Tell me a joke.  "}])
    out = await run_task(tgi_service, "magpie", [{}], {"only_instruction": True, "n_turns": 3})
    (row,) = out["rows"]
    assert row["instruction"] == "Tell me a joke." and "response" not in row and "conversation" not in row
    assert row["metadata"]["llm_calls"] == 1
    (call,) = generate_requests(mock)
    assert call["inputs"] == USER_OPEN  # no system prompt: the template's own opening


async def test_end_with_user_single_turn(tgi_service, mock):
    mock.script([{"route": "/generate", "reply": "Q"}])
    out = await run_task(tgi_service, "magpie", [{}], {"end_with_user": True})
    assert out["rows"][0]["instruction"] == "Q" and out["rows"][0]["response"] is None
    assert len(generate_requests(mock)) == 1


async def test_user_stop_strings_are_kept_with_the_end_of_turn(tgi_service, mock):
    mock.script([{"route": "/generate", "match": "Q?", "reply": "answer"},
                 {"route": "/generate", "reply": "Q?"}])
    out = await run_task(tgi_service, "magpie", [{}], llm={"generation_kwargs": {"stop": ["###"],
                                                                                 "max_new_tokens": 50}})
    assert out["rows"][0]["instruction"] == "Q?"
    for body in generate_requests(mock):
        assert body["parameters"]["stop"] == ["###", EOT] and body["parameters"]["max_new_tokens"] == 50


async def test_empty_user_message_is_a_parse_error(tgi_service, mock):
    mock.script([{"route": "/generate", "reply": "   "}])
    out = await run_task(tgi_service, "magpie", [{}, {}])
    assert out["failed"] == 2 and all(r["error"]["type"] == "parse_error" for r in out["rows"])


async def test_system_prompts_drawn_per_row_and_seeded(tgi_service, mock):
    mock.script([{"route": "/generate", "reply": "x"}])
    prompts = {"You are a chef.": 1, "You are a pilot.": 1, "You are a poet.": 2}
    out = await run_task(tgi_service, "magpie-generator", None,
                         {"num_rows": 12, "system_prompt": prompts, "include_system_prompt": True, "seed": 3})
    rows = out["rows"]
    assert len(rows) == 12 and out["failed"] == 0
    assert all(r["system_prompt"] in prompts and r["system_prompt_key"] == r["system_prompt"] for r in rows)
    assert len({r["system_prompt"] for r in rows}) >= 2
    user_calls = [b["inputs"] for b in generate_requests(mock) if b["inputs"].endswith(USER_OPEN)]
    assert sorted(user_calls) == sorted(f"<|im_start|>system\n{r['system_prompt']}{EOT}\n{USER_OPEN}" for r in rows)

    again = await run_task(tgi_service, "magpie-generator", None,
                           {"num_rows": 12, "system_prompt": prompts, "include_system_prompt": True, "seed": 3})
    assert [r["system_prompt"] for r in again["rows"]] == [r["system_prompt"] for r in rows]


async def test_named_weighted_system_prompts(tgi_service, mock):
    mock.script([{"route": "/generate", "reply": "x"}])
    out = await run_task(tgi_service, "magpie-generator", None,
                         {"num_rows": 3, "system_prompt": {"math": ["You teach maths.", 1], "none": ["", 0]}})
    assert [r["system_prompt_key"] for r in out["rows"]] == ["math"] * 3
    assert "system_prompt" not in out["rows"][0]
    assert all("You teach maths." in b["inputs"] for b in generate_requests(mock))


async def test_generator_makes_exactly_num_rows(tgi_service, mock):
    mock.script([{"route": "/generate", "reply": "hi"}])
    out = await run_task(tgi_service, "magpie-generator", None, {"num_rows": 7, "system_prompt": "Be brief."})
    assert len(out["rows"]) == 7 and out["failed"] == 0
    assert mock.stats()["by_route"]["/generate"] == 14


async def test_a_chat_only_backend_is_422_without_calls(service, mock):
    for task, body in (("magpie", {"rows": [{}]}), ("magpie-generator", {"params": {"num_rows": 2}})):
        response = await service.post(f"/tasks/{task}", json=body)
        assert response.status_code == 422 and "raw" in response.text
    assert mock.stats()["requests"] == 0


@pytest.mark.parametrize("params", [
    {"n_turns": 0}, {"system_prompt": []}, {"system_prompt": {"a": -1}}, {"system_prompt": {"a": 0}},
    {"system_prompt": 5}, {"system_prompt": {}},
    {"system_prompt": {"a": ["x", 0.5], "b": ["y", 0.6]}},  # probabilities must sum to 1, as distilabel's
    {"system_prompt": {"a": "x", "b": 1}},                  # one form per dict
])
async def test_invalid_params_are_422_without_calls(tgi_service, mock, params):
    response = await tgi_service.post("/tasks/magpie", json={"rows": [{}], "params": params})
    assert response.status_code == 422, response.text
    assert mock.stats()["requests"] == 0


async def test_bad_system_prompt_column_is_422(tgi_service, mock):
    response = await tgi_service.post("/tasks/magpie", json={"rows": [{}, {"system_prompt": ["x"]}]})
    assert response.status_code == 422 and "rows[1].system_prompt" in response.text
    assert mock.stats()["requests"] == 0


# ---- the pure pieces ----

@pytest.mark.parametrize("after, token", [
    ("<|im_end|>\n<|im_start|>assistant\n", "<|im_end|>"),
    ("<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n", "<|eot_id|>"),
    ("<end_of_turn>\n<start_of_turn>model\n", "<end_of_turn>"),
    (" [/INST]", "[/INST]"),
    ("</s>", "</s>"),
    ("", "<|im_end|>"),
])
def test_end_of_turn(after, token):
    assert end_of_turn(after) == token


def test_conversation_prompts_from_one_render():
    markers = ["@@MAGPIE_U0@@", "@@MAGPIE_A0@@", "@@MAGPIE_U1@@"]
    messages = [{"role": "user", "content": markers[0]}, {"role": "assistant", "content": markers[1]},
                {"role": "user", "content": markers[2]}]
    conv = Conversation(chatml(messages), markers)
    assert conv.eot == "<|im_end|>" and conv.prompt(markers[0]) == USER_OPEN
    conv.filled[markers[0]] = "hi"
    assert conv.prompt(markers[1]) == f"{USER_OPEN}hi{EOT}\n<|im_start|>assistant\n"
    conv.filled[markers[1]], conv.filled[markers[2]] = "hello", "bye"
    assert conv.prompt(None) == chatml([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
                                        {"role": "user", "content": "bye"}])


def test_draw_system_prompt():
    import random
    assert draw_system_prompt(None, random.Random(0)) == (None, None)
    assert draw_system_prompt("s", random.Random(0)) == ("s", None)
    assert draw_system_prompt(["a"], random.Random(0)) == ("a", None)
    assert draw_system_prompt({"a": 0, "b": 1}, random.Random(0)) == ("b", "b")
    assert draw_system_prompt({"k": ["text", 1]}, random.Random(0)) == ("text", "k")
