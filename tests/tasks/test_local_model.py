"""magpie and generate-embeddings on the real embedded model (SmolLM2-135M-Instruct) through
the `local` provider. Small token budgets: the model runs on a couple of shared CPU cores."""

from __future__ import annotations

import math

import pytest

from app.config import BackendConfig, Settings
from tests.service import serve

from .conftest import run_task

pytest.importorskip("llm_clients.local", reason="the local provider is not there yet")

GREEDY = {"max_new_tokens": 12, "do_sample": False}


@pytest.fixture(scope="module")
def local_settings() -> Settings:
    return Settings(backends={"local": BackendConfig(provider="local", max_concurrency=4, timeout_s=300)})


@pytest.fixture
async def local_service(local_settings):
    async with serve(local_settings) as client:
        yield client


async def test_magpie_one_turn(local_service):
    out = await run_task(local_service, "magpie", [{"system_prompt": "You are a helpful cooking assistant."}],
                         llm={"generation_kwargs": GREEDY})
    (row,) = out["rows"]
    assert row["error"] is None, row["error"]
    assert isinstance(row["instruction"], str) and row["instruction"].strip()
    assert isinstance(row["response"], str)
    assert "<|im_end|>" not in row["instruction"] and "<|im_start|>" not in row["instruction"]
    assert row["metadata"]["llm_calls"] == 2
    prompt = row["metadata"]["raw_input"]  # the reply's prompt: ChatML of the conversation so far
    assert prompt.startswith("<|im_start|>system\nYou are a helpful cooking assistant.<|im_end|>\n<|im_start|>user\n")
    assert prompt.endswith(f"{row['instruction']}<|im_end|>\n<|im_start|>assistant\n")
    assert row["model_name"]


async def test_magpie_generator_instructions(local_service):
    out = await run_task(local_service, "magpie-generator", None, {"num_rows": 2, "only_instruction": True},
                         llm={"generation_kwargs": {"max_new_tokens": 12, "temperature": 1.0, "seed": 1}})
    assert len(out["rows"]) == 2
    assert all(r["error"] is None and r["instruction"] and r["metadata"]["llm_calls"] == 1 for r in out["rows"])
    assert all(r["metadata"]["raw_input"].endswith("<|im_start|>user\n") for r in out["rows"])


async def test_embeddings(local_service):
    rows = [{"text": "The cat sat on the mat."}, {"text": [{"role": "user", "content": "The cat sat on the mat."}]},
            {"text": "Quarterly revenue grew by four percent."}]
    out = await run_task(local_service, "generate-embeddings", rows)
    assert out["failed"] == 0
    a, b, c = (r["embedding"] for r in out["rows"])
    assert len(a) == len(b) == len(c) >= 64 and all(math.isfinite(x) for x in a)
    assert max(abs(x - y) for x, y in zip(a, b)) < 1e-3  # a string is one chat-templated user message
    assert max(abs(x - y) for x, y in zip(a, c)) > 1e-2
