"""text- and chat-generation through the service on every provider, JSON and SSE, against
the mock LLM server's OpenAI, Mistral and TGI routes."""

import pytest
from httpx_sse import aconnect_sse

from tests.service import mock_settings, serve

PROVIDERS = ["openai", "mistral", "tgi"]


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_text_and_chat_generation(mock, provider):
    async with serve(mock_settings(mock.url, provider=provider)) as client:
        body = (await client.post("/tasks/text-generation", json={
            "rows": [{"instruction": "first question"}, {"instruction": "second question"}],
            "llm": {"generation_kwargs": {"max_new_tokens": 50, "temperature": 0.5}}})).json()
        assert [r["generation"] for r in body["rows"]] == ["Echo: first question", "Echo: second question"]
        assert body["usage"] == {"input_tokens": 4, "output_tokens": 6, "cost_usd": 0.0, "cached_calls": 0}
        chat = (await client.post("/tasks/chat-generation", json={
            "rows": [{"messages": [{"role": "user", "content": "hello there"}]}]})).json()
        assert chat["rows"][0]["generation"] == "Echo: hello there" and chat["failed"] == 0
    sent = [r["body"] for r in mock.requests()]
    assert len(sent) == 3
    assert all(r.get("max_tokens", r.get("parameters", {}).get("max_new_tokens")) == 50 for r in sent[:2])


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_stream_tokens(mock, provider):
    async with serve(mock_settings(mock.url, provider=provider)) as client:
        events = []
        async with aconnect_sse(client, "POST", "/tasks/text-generation", json={
                "rows": [{"instruction": "one two three"}], "stream": True, "stream_tokens": True}) as source:
            async for ev in source.aiter_sse():
                events.append(ev)
    tokens = [e.json()["text"] for e in events if e.event == "token"]
    assert len(tokens) > 1 and "".join(tokens) == "Echo: one two three"
    assert [e.event for e in events[-2:]] == ["row", "done"]
    assert events[-2].json()["row"]["generation"] == "Echo: one two three"


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_retry_and_row_error(mock, provider):
    mock.script([{"match": "flaky", "status": 503, "times": 1}, {"match": "broken", "status": 500}])
    async with serve(mock_settings(mock.url, provider=provider, max_retries=2)) as client:
        body = (await client.post("/tasks/text-generation", json={
            "rows": [{"instruction": "flaky"}, {"instruction": "broken"}, {"instruction": "fine"}]})).json()
    assert body["rows"][0]["generation"] == "Echo: flaky"
    assert body["rows"][1]["error"]["type"] == "llm_error" and body["rows"][1]["generation"] is None
    assert body["rows"][2]["generation"] == "Echo: fine" and body["failed"] == 1
