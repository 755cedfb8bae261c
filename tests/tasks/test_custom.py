"""Tasks defined by TOML files (tasks/custom.py) and the shipped examples."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from app.config import TasksConfig
from app.main import create_app
from tasks import Registry
from tasks.custom import CustomTaskError, load_dir
from tests.service import mock_settings, serve

from .conftest import run_task

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "tasks"


@pytest.fixture
async def examples_service(mock):
    async with serve(mock_settings(mock.url, tasks=TasksConfig(custom_dir=str(EXAMPLES)))) as client:
        yield client


def test_examples_load():
    tasks = {t.name: t for t in load_dir(EXAMPLES)}
    assert set(tasks) == {"oss-instruct", "wizardlm-equal-prompts"}
    assert tasks["oss-instruct"].inputs == ("code_snippet",)
    assert tasks["oss-instruct"].outputs == ("problem", "solution")
    assert tasks["wizardlm-equal-prompts"].inputs == ("instruction_1", "instruction_2")


async def test_examples_are_listed(examples_service):
    listed = {t["name"]: t for t in (await examples_service.get("/tasks")).json()["tasks"]}
    assert listed["oss-instruct"]["outputs"] == ["problem", "solution"] and not listed["oss-instruct"]["generator"]
    assert "evol-instruct" in listed  # built-ins are still there
    detail = (await examples_service.get("/tasks/wizardlm-equal-prompts")).json()
    assert detail["inputs"] == ["instruction_1", "instruction_2"]
    assert "impartial judge" in detail["params_schema"]["properties"]["system_prompt"]["default"]


async def test_oss_instruct_runs(examples_service, mock):
    mock.script([{"reply": "[Problem Description]\nWrite a pipeline.\n\n[Solution]\n```python\npass\n```"},])
    out = await run_task(examples_service, "oss-instruct", [{"code_snippet": "def f(): return 1"}])
    (row,) = out["rows"]
    assert row["problem"] == "Write a pipeline." and row["solution"] == "```python\npass\n```"
    (request,) = mock.requests()
    system, user = request["body"]["messages"]
    assert system["role"] == "system" and "programming problems" in system["content"]
    assert "def f(): return 1" in user["content"] and "[Solution]" in user["content"]


async def test_oss_instruct_unmatched_answer_is_a_parse_error(examples_service, mock):
    mock.script([{"reply": "I'd rather not."}])
    out = await run_task(examples_service, "oss-instruct", [{"code_snippet": "x = 1"}])
    assert out["rows"][0]["error"]["type"] == "parse_error" and out["rows"][0]["problem"] is None


@pytest.mark.parametrize("reply, verdict", [("Not Equal. They differ.", "Not Equal"), ("equal", "equal"),
                                            ("**Equal**", "Equal")])
async def test_wizardlm_equal_prompts_runs(examples_service, mock, reply, verdict):
    mock.script([{"reply": reply}])
    out = await run_task(examples_service, "wizardlm-equal-prompts",
                         [{"instruction_1": "What is AI?", "instruction_2": "Define AI."}],
                         {"system_prompt": None})
    assert out["rows"][0]["response"] == verdict
    (request,) = mock.requests()
    (user,) = request["body"]["messages"]  # system prompt nulled by the request
    assert "First instruction: What is AI?\nSecond instruction: Define AI." in user["content"]


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


RAW = '''
name = "shout"
inputs = ["text"]
outputs = ["loud"]
template = "Say it louder: {{ text }}"
parser = "raw"
'''

JSON = '''
name = "facts"
description = "Facts about a topic."
inputs = ["topic"]
outputs = ["fact", "source"]
template = "Give one fact about {{ topic }} as JSON with keys fact and source."
[parser]
type = "json"
'''


async def test_raw_and_json_parsers(tmp_path, mock):
    write(tmp_path, "shout.toml", RAW)
    write(tmp_path, "facts.toml", JSON)
    write(tmp_path, "notes.txt", "not a task file: ignored")
    mock.script([{"match": "louder", "reply": "  HELLO!  "},
                 {"match": "fact", "reply": 'Sure: ```json\n{"fact": "Water is wet", "verified": true}\n```'}])
    async with serve(mock_settings(mock.url, tasks=TasksConfig(custom_dir=str(tmp_path)))) as client:
        out = await run_task(client, "shout", [{"text": "hello"}])
        assert out["rows"][0]["loud"] == "HELLO!"
        out = await run_task(client, "facts", [{"topic": "water"}])
        assert out["rows"][0]["fact"] == "Water is wet" and out["rows"][0]["source"] is None
        # rows are checked against the file's inputs, and unknown params refused, before any call
        assert (await client.post("/tasks/facts", json={"rows": [{"subject": "x"}]})).status_code == 422
        assert (await client.post("/tasks/facts", json={"rows": [{"topic": "x"}],
                                                        "params": {"temperature": 1}})).status_code == 422
    assert mock.stats()["requests"] == 2


async def test_templates_render_sandboxed(tmp_path, mock):
    write(tmp_path, "sneaky.toml", '''
name = "sneaky"
inputs = ["text"]
outputs = ["out"]
template = "{{ text.__class__.__mro__ }}"
parser = "raw"
''')
    async with serve(mock_settings(mock.url, tasks=TasksConfig(custom_dir=str(tmp_path)))) as client:
        response = await client.post("/tasks/sneaky", json={"rows": [{"text": "x"}]})
    assert response.status_code == 422 and "not allowed" in response.text
    assert mock.stats()["requests"] == 0


@pytest.mark.parametrize("text, problem", [
    ("name = 'x'\ninputs = [", "cannot read it"),
    (RAW.replace('parser = "raw"', ""), "parser"),
    (RAW.replace('name = "shout"', 'name = "Bad Name!"'), "name"),
    (RAW.replace("{{ text }}", "{{ txt }}"), "template"),                      # unknown variable
    (RAW.replace("{{ text }}", "no variables"), "does not use the column"),   # an input left unused
    (RAW.replace("{{ text }}", "{{ text"), "syntax error"),
    (RAW.replace('outputs = ["loud"]', 'outputs = ["loud", "louder"]'), "exactly one output"),
    (RAW.replace('parser = "raw"', 'parser = "xml"'), "parser"),
    (RAW.replace('parser = "raw"', '[parser]\ntype = "regex"\npattern = "(?P<other>.*)"'), "named group"),
    (RAW.replace('parser = "raw"', '[parser]\ntype = "regex"\npattern = "(?P<loud>.*"'), "pattern"),
    (RAW.replace('outputs = ["loud"]', 'outputs = ["text"]'), "both inputs and outputs"),
    (RAW.replace('outputs = ["loud"]', 'outputs = ["error"]'), "reserved"),
    (RAW + 'colour = "blue"\n', "colour"),
    (RAW.replace('name = "shout"', 'name = "evol-instruct"'), "built-in"),
])
def test_broken_files_name_the_file(tmp_path, text, problem):
    path = write(tmp_path, "broken.toml", text)
    with pytest.raises(CustomTaskError) as info:
        load_dir(tmp_path, taken={t.name for t in Registry.builtin()})
    assert str(path) in str(info.value) and problem in str(info.value)


def test_duplicate_names_and_missing_dir(tmp_path):
    write(tmp_path, "a.toml", RAW)
    write(tmp_path, "b.toml", RAW)
    with pytest.raises(CustomTaskError, match="also defined in"):
        load_dir(tmp_path)
    with pytest.raises(CustomTaskError, match="not a directory"):
        load_dir(tmp_path / "nope")


async def test_a_broken_file_stops_the_start_up(tmp_path, mock):
    path = write(tmp_path, "broken.toml", "name = ")
    app = create_app(mock_settings(mock.url, tasks=TasksConfig(custom_dir=str(tmp_path))))
    with pytest.raises(CustomTaskError, match=re.escape(str(path))):
        async with app.router.lifespan_context(app):
            pass
