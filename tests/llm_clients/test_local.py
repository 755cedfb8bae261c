"""The `local` provider: the sidecar's engine in process, on the real embedded model."""

from __future__ import annotations

import pytest

from app.config import BackendConfig
from llm_clients.base import GenerationKwargs
from llm_clients.limits import LLMError, TransientError
from llm_clients.local import LocalClient, sampling_params
from sidecar.engine import get_engine
from tests.sidecar.server import request_limit

from .helpers import policy

FRANCE = [{"role": "user", "content": "What is the capital of France?"}]
GREEDY = GenerationKwargs(max_new_tokens=12, do_sample=False)


@pytest.fixture(scope="module")
async def local():
    client = LocalClient("local", BackendConfig(provider="local", device="cpu", max_concurrency=4, timeout_s=120),
                         policy(4, max_retries=0, timeout_s=120))
    await client.start()
    yield client
    await client.aclose()


async def test_one_engine_for_the_process(local):
    assert await local.engine() is get_engine(device="cpu")  # the sidecar app in this process would share it
    assert local.model == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert local.capabilities == {"chat", "stream", "raw", "chat_template", "embed"}


async def test_chat(local):
    (completion,) = await local.chat(FRANCE, GREEDY)
    assert "Paris" in completion.text and completion.model == local.model
    assert completion.usage.input_tokens > 10 and 0 < completion.usage.output_tokens <= 12
    assert completion.finish_reason in ("stop", "length")
    two = await local.chat(FRANCE, GenerationKwargs(max_new_tokens=4, temperature=1.0), n=2)
    assert len(two) == 2


async def test_stream_chat(local):
    deltas: list[str] = []
    streamed = await local.stream_chat(FRANCE, GREEDY, on_delta=deltas.append)
    (whole,) = await local.chat(FRANCE, GREEDY)
    assert "".join(deltas) == streamed.text == whole.text

    deltas.clear()
    stopped = await local.stream_chat(FRANCE, GREEDY.model_copy(update={"stop": ["Paris"]}), on_delta=deltas.append)
    assert stopped.finish_reason == "stop" and "Paris" not in stopped.text
    assert "".join(deltas) == stopped.text


async def test_complete_raw_prompt(local):
    # magpie's use: a chat template cut open at a user turn; the model writes the user message
    prompt = "<|im_start|>system\nYou are a helpful cooking assistant.<|im_end|>\n<|im_start|>user\n"
    completion = await local.complete(prompt, GREEDY)
    assert completion.text.strip() and "<|im_" not in completion.text
    assert completion.usage.input_tokens == len(get_engine(device="cpu").encode(prompt))
    stopped = await local.complete(prompt, GREEDY.model_copy(update={"stop": [" "]}))
    assert " " not in stopped.text and stopped.finish_reason == "stop"


async def test_chat_template_and_embed(local):
    text = await local.apply_chat_template(FRANCE)
    assert text.endswith("What is the capital of France?<|im_end|>\n<|im_start|>assistant\n")
    vectors = await local.embed(["The cat sat on the mat.", FRANCE])
    assert [len(v) for v in vectors] == [576, 576]


async def test_a_full_queue_is_transient(local):
    with request_limit(get_engine(device="cpu"), 0):
        with pytest.raises(LLMError) as caught:
            await local.complete("Hello", GREEDY)
    assert isinstance(caught.value.__cause__, TransientError)  # the policy retries it (none here)
    assert caught.value.__cause__.retry_after == 1.0


async def test_an_impossible_request_is_final(local):
    with pytest.raises(LLMError) as caught:
        await local.complete("Hello", GenerationKwargs(max_new_tokens=100_000))
    assert not isinstance(caught.value, TransientError) and "max_new_tokens" in str(caught.value)


@pytest.mark.parametrize(("kwargs", "chat", "sampling"), [
    (GenerationKwargs(), False, False),  # raw completion: greedy by default (TGI's /generate)
    (GenerationKwargs(), True, True),  # chat: samples by default (OpenAI)
    (GenerationKwargs(do_sample=False), True, False),
    (GenerationKwargs(temperature=0), True, False),
    (GenerationKwargs(temperature=0.7), False, True),
])
def test_sampling_defaults(kwargs, chat, sampling):
    assert sampling_params(kwargs, chat=chat).sampling is sampling


def test_kwargs_map_one_to_one():
    params = sampling_params(GenerationKwargs(max_new_tokens=5, temperature=0.5, top_p=0.9, top_k=3, seed=1,
                                              stop=["x"], repetition_penalty=1.1, frequency_penalty=0.2,
                                              presence_penalty=0.1, do_sample=True))
    assert (params.max_new_tokens, params.temperature, params.top_p, params.top_k, params.seed, params.stop,
            params.repetition_penalty, params.frequency_penalty, params.presence_penalty, params.do_sample) == (
        5, 0.5, 0.9, 3, 1, ("x",), 1.1, 0.2, 0.1, True)
