"""The pipelines shipped in examples/pipelines, served from `[pipelines] dir`: listed,
described (inputs, outputs, Mermaid graph) and run against the mock LLM; the local one on
the embedded model."""

from __future__ import annotations

from app.config import BackendConfig, JobsConfig, PipelinesConfig, Settings
from tests.conftest import ROOT
from tests.service import fresh_data_dir, serve

EXAMPLES = str(ROOT / "examples" / "pipelines")


def settings(mock_url: str) -> Settings:
    backends = {name: BackendConfig(provider="openai", base_url=mock_url + "/v1", model=f"model-{name}",
                                    max_concurrency=8, max_retries=0, timeout_s=10)
                for name in ("openai-main", "sidecar")}
    return Settings(backends=backends, jobs=JobsConfig(data_dir=fresh_data_dir()),
                    pipelines=PipelinesConfig(dir=EXAMPLES))


async def test_listed_and_described(mock):
    async with serve(settings(mock.url)) as client:
        listed = (await client.get("/pipelines")).json()["pipelines"]
        assert {p["name"] for p in listed} == {"instruction-response", "sft-from-seeds", "preference", "local-tiny"}
        sft = (await client.get("/pipelines/sft-from-seeds")).json()
        assert sft["inputs"] == ["input"] and sft["outputs"] == ["instruction", "response"]
        assert sft["mermaid"].startswith("flowchart TD") and "explode instruction" in sft["mermaid"]
        pref = (await client.get("/pipelines/preference")).json()
        assert pref["inputs"] == ["instruction"]
        assert pref["outputs"] == ["instruction", "chosen", "rejected", "chosen_model", "rejected_model", "scores"]
        assert "openai-main" in pref["mermaid"] and "sidecar" in pref["mermaid"]
        assert (await client.get("/pipelines/nope")).status_code == 404
    assert (await mock.astats())["requests"] == 0


async def test_instruction_response(mock):
    async with serve(settings(mock.url)) as client:
        r = await client.post("/pipelines/instruction-response",
                              json={"rows": [{"instruction": "Generate a short question about the Smol-Course."}]})
    row = r.json()["rows"][0]
    assert row["instruction"] == "Echo: Generate a short question about the Smol-Course."
    assert row["response"] == "Echo: " + row["instruction"]


async def test_sft_from_seeds(mock):
    await mock.ascript([
        {"match": "queries that users could",
         "reply": "How do plants make food?\nHow can I make sourdough?\nWhat is a black hole?"},
        {"match": "plants make food", "reply": "#Rewritten Prompt#: how do I bake bread at home?"},
        {"match": "make sourdough", "reply": "#Rewritten Prompt#: How do I bake bread at HOME!"},
        {"match": "black hole", "reply": "#Rewritten Prompt#: Explain dark matter simply."},
        {"match": "dark matter", "reply": "Too hard."},
    ])
    async with serve(settings(mock.url)) as client:
        body = (await client.post("/pipelines/sft-from-seeds", json={"rows": [{"input": "science and baking"}]})).json()
    assert body["filtered"] == 2  # the short answer, and one of the two bread instructions
    (row,) = body["rows"]
    assert row["instruction"].lower().startswith("how do i bake bread at home")
    assert row["response"] == "Echo: " + row["instruction"] and set(row) == {"id", "instruction", "response",
                                                                              "metadata", "error"}
    assert body["steps"]["quality"]["filtered"] == 1 and body["steps"]["unique"]["filtered"] == 1
    assert (await mock.astats())["requests"] == 1 + 3 + 3


async def test_preference(mock):
    await mock.ascript([{"match": "Rank the responses", "reply": "[1] Score: 2\n[2] Score: 4"}])
    async with serve(settings(mock.url)) as client:
        body = (await client.post("/pipelines/preference", json={"rows": [{"instruction": "Name a colour."}]})).json()
    (row,) = body["rows"]
    assert row["chosen_model"] == "model-sidecar" and row["rejected_model"] == "model-openai-main"
    assert row["chosen"] == "Echo: Name a colour." and row["scores"] == [2, 4]
    assert (await mock.astats())["requests"] == 3


async def test_local_tiny_on_the_embedded_model():
    local = Settings(backends={"local": BackendConfig(provider="local", max_concurrency=4)},
                     jobs=JobsConfig(data_dir=fresh_data_dir()), pipelines=PipelinesConfig(dir=EXAMPLES))
    async with serve(local) as client:
        r = await client.post("/pipelines/local-tiny", json={"rows": [{"instruction": "Name a colour."},
                                                                     {"instruction": "Name a fruit."}]})
        assert r.status_code == 200, r.text
        body = r.json()
    assert body["failed"] == 0 and len(body["rows"]) + body["filtered"] == 2
    for row in body["rows"]:
        assert row["response"] and row["summary"] and row["model_name"]
        assert row["metadata"]["llm_calls"] == 2
