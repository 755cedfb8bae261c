"""The OpenAI Batch API, served: the real `openai` SDK's files and batches clients against
a real serve + worker (the tests' own Redis) and the mock LLM: a batch with a line that
fails, lines naming a backend or a model of the default backend, cancel keeping the
finished lines, bad input files refused naming the line."""

from __future__ import annotations

import hashlib
import json
import time
from functools import partial

import httpx
import openai
import pytest
from openai import AsyncOpenAI, OpenAI

from app.config import BackendConfig, JobsConfig, Settings
from tests.jobs.conftest import RedisServer, wait_for
from tests.service import serve


def sdk(service) -> OpenAI:
    return OpenAI(base_url=service.url + "/v1", api_key="unused", max_retries=0, timeout=30)


def batch_file(n: int, prefix: str, overrides: dict[int, dict] | None = None) -> bytes:
    lines = []
    for i in range(n):
        body = {"model": "mock", "messages": [{"role": "user", "content": f"{prefix} {i}"}], "max_tokens": 20}
        line = {"custom_id": f"req-{i}", "method": "POST", "url": "/v1/chat/completions", "body": body}
        lines.append(json.dumps((overrides or {}).get(i, line)))
    return ("\n".join(lines) + "\n").encode()


def wait(client: OpenAI, batch_id: str, statuses=("completed", "failed", "cancelled"), until=None, timeout=60):
    deadline = time.monotonic() + timeout
    while True:
        batch = client.batches.retrieve(batch_id)
        if (until(batch) if until else batch.status in statuses):
            return batch
        assert time.monotonic() < deadline, batch
        time.sleep(0.1)


def test_a_batch_with_a_failing_line(service, mock):
    mock.script([{"match": "line 7", "status": 400}])
    client = sdk(service)
    other = {"custom_id": "req-9", "method": "POST", "url": "/v1/chat/completions",
             "body": {"model": "another-model", "messages": [{"role": "user", "content": "line 9"}]}}
    content = batch_file(12, "line", {9: other})
    uploaded = client.files.create(file=("requests.jsonl", content), purpose="batch")
    assert uploaded.id.startswith("file-") and uploaded.bytes == len(content) and uploaded.purpose == "batch"
    assert client.files.retrieve(uploaded.id).filename == "requests.jsonl"
    assert client.files.content(uploaded.id).content == content

    batch = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                                  completion_window="24h", metadata={"run": "one"})
    assert batch.status in ("in_progress", "completed") and batch.request_counts.total == 12
    done = wait(client, batch.id)
    assert done.status == "completed" and done.metadata == {"run": "one"}
    assert (done.request_counts.total, done.request_counts.completed, done.request_counts.failed) == (12, 11, 1)

    out = [json.loads(line) for line in client.files.content(done.output_file_id).text.splitlines()]
    assert sorted(line["custom_id"] for line in out) == sorted(f"req-{i}" for i in range(12) if i != 7)
    by_id = {line["custom_id"]: line["response"] for line in out}
    assert by_id["req-3"]["status_code"] == 200
    assert by_id["req-3"]["body"]["choices"][0]["message"]["content"] == "Echo: line 3"
    assert by_id["req-3"]["body"]["object"] == "chat.completion" and by_id["req-3"]["body"]["usage"]["completion_tokens"] == 3
    assert by_id["req-9"]["body"]["model"] == "another-model"  # a model of the default backend
    errors = [json.loads(line) for line in client.files.content(done.error_file_id).text.splitlines()]
    assert [e["custom_id"] for e in errors] == ["req-7"] and errors[0]["response"]["status_code"] >= 400
    assert client.files.retrieve(done.output_file_id).bytes == len(client.files.content(done.output_file_id).content)
    sent = mock.requests()
    assert len(sent) == 12 and {r["body"]["max_tokens"] for r in sent if r["body"]["model"] == "mock-model"} == {20}
    assert batch.id in [b.id for b in client.batches.list()]


def test_cancel_keeps_the_finished_lines(service, mock):
    mock.configure(latency_ms=400)
    client = sdk(service)
    uploaded = client.files.create(file=("slow.jsonl", batch_file(40, "slow")), purpose="batch")
    batch = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h")
    wait(client, batch.id, until=lambda b: b.request_counts.completed >= 4)
    cancelling = client.batches.cancel(batch.id)
    assert cancelling.status in ("cancelling", "cancelled")
    done = wait(client, batch.id)
    assert done.status == "cancelled" and 4 <= done.request_counts.completed < 40
    out = client.files.content(done.output_file_id).text.splitlines()
    assert len(out) == done.request_counts.completed
    assert all(json.loads(line)["response"]["body"]["choices"][0]["message"]["content"].startswith("Echo: slow")
               for line in out)


@pytest.mark.parametrize("overrides, words", [
    ({1: {"custom_id": "req-0", "method": "POST", "url": "/v1/chat/completions",
          "body": {"model": "mock", "messages": [{"role": "user", "content": "x"}]}}}, "line 2: custom_id 'req-0'"),
    ({2: {"custom_id": "req-2", "method": "POST", "url": "/v1/embeddings", "body": {"model": "mock"}}},
     "line 3: `url` must be the batch's endpoint"),
    ({1: {"custom_id": "req-1", "method": "POST", "url": "/v1/chat/completions", "body": {"model": "mock"}}},
     "input file line 2: body: body.messages"),
    ({0: {"custom_id": "req-0", "method": "POST", "url": "/v1/chat/completions",
          "body": {"model": "mock", "messages": [{"role": "user", "content": "x"}], "temperature": 9}}},
     "input file line 1: body: body.temperature"),
])
def test_bad_lines_are_refused_naming_the_line(service, mock, overrides, words):
    client = sdk(service)
    uploaded = client.files.create(file=("bad.jsonl", batch_file(3, "bad", overrides)), purpose="batch")
    with pytest.raises(openai.UnprocessableEntityError) as caught:
        client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h")
    assert words in str(caught.value)
    assert mock.stats()["requests"] == 0


def test_unknown_ids_are_404(service, mock):
    client = sdk(service)
    with pytest.raises(openai.NotFoundError):
        client.batches.retrieve("batch_nope")
    with pytest.raises(openai.NotFoundError):
        client.files.content("file-nope")
    with pytest.raises(openai.NotFoundError):
        client.batches.create(input_file_id="file-nope", endpoint="/v1/chat/completions", completion_window="24h")


def test_embeddings_need_a_backend_that_embeds(service, mock):
    client = sdk(service)
    line = {"custom_id": "e-0", "method": "POST", "url": "/v1/embeddings", "body": {"model": "mock", "input": "hello"}}
    uploaded = client.files.create(file=("emb.jsonl", (json.dumps(line) + "\n").encode()), purpose="batch")
    with pytest.raises(openai.UnprocessableEntityError) as caught:
        client.batches.create(input_file_id=uploaded.id, endpoint="/v1/embeddings", completion_window="24h")
    assert "needs a backend that can embed" in str(caught.value)


def test_a_batch_past_its_window_expires_keeping_its_finished_lines(service, mock):
    mock.configure(latency_ms=400)  # 40 lines at 4 in flight: 4 s, past the 3 s window
    client = sdk(service)
    uploaded = client.files.create(file=("late.jsonl", batch_file(40, "late")), purpose="batch")
    batch = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="3s")
    assert batch.expires_at == batch.created_at + 3
    expired = wait(client, batch.id, statuses=("expired",))
    assert expired.expired_at is not None

    def settled():  # every job of the service finished (the batch's were cancelled)
        jobs = httpx.get(f"{service.url}/jobs").json()["jobs"]
        return all(job["status"] not in ("queued", "running") for job in jobs)
    deadline = time.monotonic() + 30
    while not settled():
        assert time.monotonic() < deadline
        time.sleep(0.1)
    done = client.batches.retrieve(batch.id)
    assert done.status == "expired" and 0 < done.request_counts.completed < 40
    assert len(client.files.content(done.output_file_id).text.splitlines()) == done.request_counts.completed
    with pytest.raises(openai.UnprocessableEntityError):
        client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="soon")



async def test_an_embeddings_batch_on_a_backend_that_embeds(mock, tmp_path):
    """A service of its own with a `tgi` backend on the mock (which serves TGI's /embed as
    `synthserve sidecar` does; its /info names a plain TGI, so embeddings are turned on by
    hand, as in tests/tasks), running its jobs itself on a redis-server of the test's."""
    redis = RedisServer(tmp_path)
    settings = Settings(backends={"embedder": BackendConfig(provider="tgi", base_url=mock.url)},
                        jobs=JobsConfig(redis_url=redis.url, consume=True))
    try:
        async with serve(settings) as http:
            http.app.state.synth.backends["embedder"].capabilities |= {"embed"}
            client = AsyncOpenAI(base_url=str(http.base_url) + "/v1", api_key="unused", max_retries=0, timeout=30)
            texts = [["alpha"], ["beta", "gamma"]]
            content = "".join(json.dumps({"custom_id": f"e-{i}", "method": "POST", "url": "/v1/embeddings",
                                          "body": {"model": "embedder", "input": t if len(t) > 1 else t[0]}}) + "\n"
                              for i, t in enumerate(texts))
            uploaded = await client.files.create(file=("emb.jsonl", content.encode()), purpose="batch")
            batch = await client.batches.create(input_file_id=uploaded.id, endpoint="/v1/embeddings",
                                                completion_window="24h")
            done = await wait_for(partial(_finished, client, batch.id), timeout=30)
            assert done.status == "completed" and done.request_counts.completed == 2
            lines = (await client.files.content(done.output_file_id)).text.splitlines()
            out = {line["custom_id"]: line["response"]["body"] for line in map(json.loads, lines)}
    finally:
        redis.close()
    expected = lambda text: [b / 255 - 0.5 for b in hashlib.sha256(text.encode()).digest()[:16]]  # noqa: E731
    assert [d["embedding"] for d in out["e-1"]["data"]] == [expected("beta"), expected("gamma")]
    assert out["e-0"]["data"][0]["embedding"] == expected("alpha") and out["e-0"]["object"] == "list"


async def _finished(client: AsyncOpenAI, batch_id: str):
    batch = await client.batches.retrieve(batch_id)
    return batch if batch.status in ("completed", "failed", "cancelled") else None
