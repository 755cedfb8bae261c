"""The /tasks contract of docs/api.md for text- and chat-generation, against the mock LLM server."""

import asyncio
import json

import httpx
import pytest
from httpx_sse import aconnect_sse

from tests.service import mock_settings, serve


def rows_of(n: int) -> list[dict]:
    return [{"instruction": f"question number {i}", "extra": i} for i in range(n)]


async def test_health_tasks_and_docs(service):
    assert (await service.get("/health")).json() == {"status": "ok"}
    tasks = {t["name"]: t for t in (await service.get("/tasks")).json()["tasks"]}
    assert tasks["text-generation"] == {
        "name": "text-generation", "description": tasks["text-generation"]["description"],
        "inputs": ["instruction"], "outputs": ["generation"], "generator": False}
    detail = (await service.get("/tasks/chat-generation")).json()
    assert {"system_prompt", "num_generations", "group_generations", "seed"} <= set(detail["params_schema"]["properties"])
    assert (await service.get("/tasks/nope")).status_code == 404
    schema = (await service.get("/openapi.json")).json()
    assert "/tasks/{name}" in schema["paths"] and "TaskRequest" in schema["components"]["schemas"]
    assert (await service.get("/docs")).status_code == 200


async def test_twenty_rows_in_order_with_extra_columns(service, mock):
    r = await service.post("/tasks/text-generation", json={"rows": rows_of(20)})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["task"] == "text-generation" and body["failed"] == 0
    for i, row in enumerate(body["rows"]):
        assert row["instruction"] == f"question number {i}" and row["extra"] == i
        assert row["generation"] == f"Echo: question number {i}"
        assert row["model_name"] == "mock-model" and row["error"] is None
        meta = row["metadata"]
        assert meta["llm_calls"] == 1
        assert meta["raw_input"] == [{"role": "user", "content": f"question number {i}"}]
        assert meta["raw_output"] == row["generation"]
        assert meta["usage"] == {"input_tokens": 3, "output_tokens": 4, "cost_usd": 0.0, "cached_calls": 0}
    assert body["usage"] == {"input_tokens": 60, "output_tokens": 80, "cost_usd": 0.0, "cached_calls": 0}
    assert mock.stats()["requests"] == 20


async def test_concurrency_cap_is_held_and_used(service, mock):
    mock.configure(latency_ms=50)
    r = await service.post("/tasks/text-generation", json={"rows": rows_of(60)})
    assert r.status_code == 200
    stats = mock.stats()
    assert stats["requests"] == 60
    assert stats["max_in_flight"] == 8  # the backend's max_concurrency: never more, and reached


async def test_cap_holds_across_concurrent_requests(service, mock):
    mock.configure(latency_ms=30)
    answers = await asyncio.gather(*(service.post("/tasks/text-generation", json={"rows": rows_of(15)})
                                     for _ in range(4)))
    assert all(a.status_code == 200 for a in answers)
    assert mock.stats()["max_in_flight"] == 8


async def test_transient_500_is_retried(service, mock):
    mock.script([{"match": "number 3", "status": 500, "times": 1}])
    body = (await service.post("/tasks/text-generation", json={"rows": rows_of(5)})).json()
    assert body["failed"] == 0 and body["rows"][3]["generation"] == "Echo: question number 3"
    assert mock.stats()["requests"] == 6


async def test_failing_row_marks_only_itself(service, mock):
    mock.script([{"match": "number 2", "status": 500}])  # fails every attempt
    body = (await service.post("/tasks/text-generation", json={"rows": rows_of(5)})).json()
    assert body["failed"] == 1
    bad = body["rows"][2]
    assert bad["instruction"] == "question number 2" and bad["extra"] == 2
    assert bad["generation"] is None and bad["error"]["type"] == "llm_error"
    assert "500" in bad["error"]["message"]
    for i in (0, 1, 3, 4):
        assert body["rows"][i]["generation"] == f"Echo: question number {i}" and body["rows"][i]["error"] is None


async def test_not_retried_on_400(service, mock):
    mock.script([{"match": "number 1", "status": 400}])
    body = (await service.post("/tasks/text-generation", json={"rows": rows_of(2)})).json()
    assert body["rows"][1]["error"]["type"] == "llm_error"
    assert mock.stats()["requests"] == 2


async def test_system_prompt_param_and_row_column(service, mock):
    rows = [{"instruction": "a"}, {"instruction": "b", "system_prompt": "Row wins."}]
    r = await service.post("/tasks/text-generation", json={"rows": rows, "params": {"system_prompt": "Param."}})
    out = r.json()["rows"]
    assert out[0]["metadata"]["raw_input"][0] == {"role": "system", "content": "Param."}
    assert out[1]["metadata"]["raw_input"][0] == {"role": "system", "content": "Row wins."}
    sent = sorted((req["body"]["messages"][0]["content"] for req in mock.requests()))
    assert sent == ["Param.", "Row wins."]


async def test_custom_template_and_columns(service, mock):
    rows = [{"topic": "owls", "style": "haiku"}]
    params = {"template": "Write a {{ style }} about {{ topic | upper }}.", "columns": ["topic", "style"]}
    out = (await service.post("/tasks/text-generation", json={"rows": rows, "params": params})).json()["rows"][0]
    assert out["generation"] == "Echo: Write a haiku about OWLS."
    assert out["topic"] == "owls"


async def test_generation_kwargs_are_mapped(service, mock):
    kwargs = {"max_new_tokens": 2, "temperature": 0.3, "top_p": 0.9, "stop": ["zzz"], "seed": 7}
    out = (await service.post("/tasks/text-generation", json={
        "rows": [{"instruction": "one two three four"}], "llm": {"generation_kwargs": kwargs}})).json()
    assert out["rows"][0]["generation"] == "Echo: one"  # cut at 2 words by the mock
    sent = mock.requests()[0]["body"]
    assert sent["max_tokens"] == 2 and "max_new_tokens" not in sent
    assert (sent["temperature"], sent["top_p"], sent["stop"], sent["seed"]) == (0.3, 0.9, ["zzz"], 7)


async def test_num_generations_and_grouping(service, mock):
    rows = [{"instruction": "x"}, {"instruction": "y"}]
    out = (await service.post("/tasks/text-generation",
                              json={"rows": rows, "params": {"num_generations": 3}})).json()
    assert [r["instruction"] for r in out["rows"]] == ["x"] * 3 + ["y"] * 3
    assert all(r["generation"] == f"Echo: {r['instruction']}" for r in out["rows"])
    assert mock.stats()["requests"] == 2  # the backend's native n
    assert all(req["body"]["n"] == 3 for req in mock.requests())
    grouped = (await service.post("/tasks/text-generation", json={
        "rows": rows, "params": {"num_generations": 2, "group_generations": True}})).json()
    assert [r["generation"] for r in grouped["rows"]] == [["Echo: x"] * 2, ["Echo: y"] * 2]


async def test_include_raw_false(service):
    out = (await service.post("/tasks/text-generation",
                              json={"rows": rows_of(1), "include_raw": False})).json()["rows"][0]
    assert set(out["metadata"]) == {"usage", "llm_calls", "cached_calls"}


async def test_chat_generation(service, mock):
    conversation = [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "hello"},
                    {"role": "assistant", "content": "hi"}, {"role": "user", "content": "how are you"}]
    out = (await service.post("/tasks/chat-generation", json={"rows": [{"messages": conversation}]})).json()
    assert out["rows"][0]["generation"] == "Echo: how are you"
    assert mock.requests()[0]["body"]["messages"] == conversation
    out = (await service.post("/tasks/chat-generation", json={
        "rows": [{"messages": conversation}], "params": {"system_prompt": "Be brief."}})).json()
    assert out["rows"][0]["metadata"]["raw_input"][0] == {"role": "system", "content": "Be brief."}
    assert sum(m["role"] == "system" for m in out["rows"][0]["metadata"]["raw_input"]) == 1


BAD_REQUESTS = [
    ("text-generation", {"rows": [{"instruction": "a"}, {"nope": 1}]}, 422, "rows[1].instruction"),
    ("text-generation", {"rows": [{"instruction": 5}]}, 422, "rows[0].instruction"),
    ("text-generation", {"rows": []}, 422, "rows"),
    ("text-generation", {"rows": ["not an object"]}, 422, "rows"),
    ("text-generation", {"rows": [{"instruction": "a"}], "params": {"bogus": 1}}, 422, "params.bogus"),
    ("text-generation", {"rows": [{"instruction": "a"}], "params": {"num_generations": "many"}}, 422,
     "params.num_generations"),
    ("text-generation", {"rows": [{"instruction": "a"}], "llm": {"backend": "nope"}}, 422, "llm.backend"),
    ("text-generation", {"rows": [{"instruction": "a"}], "llm": {"generation_kwargs": {"temprature": 1}}}, 422,
     "temprature"),
    ("text-generation", {"rows": [{"instruction": "a"}], "llm": {"base_url": "http://evil"}}, 422, "base_url"),
    ("text-generation", {"rows": [{"instruction": "a"}], "params": {"template": "{{ instruction"}}, 422,
     "params.template"),
    ("text-generation", {"rows": [{"instruction": "a"}], "params": {"template": "Hello"}}, 422, "params.template"),
    ("text-generation", {"rows": [{"a": "x"}], "params": {"template": "{{ a }} {{ b }}", "columns": ["a"]}}, 422,
     "params.template"),
    ("text-generation", {"rows": [{"instruction": "a"}],
                         "params": {"template": "{{ instruction.__class__.__mro__[1].__subclasses__() }}"}}, 422,
     "not allowed"),
    ("text-generation", {"rows": [{"instruction": "a"}],
                         "params": {"template": "{{ instruction.format.__globals__ }}"}}, 422, "not allowed"),
    ("chat-generation", {"rows": [{"messages": [{"role": "assistant", "content": "hi"}]}]}, 422,
     "rows[0].messages"),
    ("chat-generation", {"rows": [{"messages": "hi"}]}, 422, "rows[0].messages"),
    ("chat-generation", {"rows": [{"messages": [{"role": "wizard", "content": "hi"}]}]}, 422, "rows[0].messages"),
    ("no-such-task", {"rows": [{"instruction": "a"}]}, 404, "no-such-task"),
]


@pytest.mark.parametrize("task,body,status,needle", BAD_REQUESTS)
async def test_bad_input_is_refused_before_any_call(service, mock, task, body, status, needle):
    r = await service.post(f"/tasks/{task}", json=body)
    assert r.status_code == status, r.text
    assert needle in json.dumps(r.json()["detail"])
    assert mock.stats()["requests"] == 0


async def test_malformed_json_and_too_many_rows(mock):
    settings = mock_settings(mock.url)
    settings.server.max_rows_per_request = 10
    async with serve(settings) as client:
        r = await client.post("/tasks/text-generation", content=b'{"rows": [', headers={"content-type": "application/json"})
        assert r.status_code == 422 and "JSON" in json.dumps(r.json()["detail"])
        r = await client.post("/tasks/text-generation", json={"rows": rows_of(11)})
        assert r.status_code == 413 and "max_rows_per_request" in r.json()["detail"]
    assert mock.stats()["requests"] == 0


async def test_sse_rows_then_done(service, mock):
    mock.script([{"match": "number 0", "latency_ms": 2500}, {"match": "number 2", "status": 500}])
    events = []
    async with aconnect_sse(service, "POST", "/tasks/text-generation",
                            json={"rows": rows_of(4), "stream": True}) as source:
        assert source.response.headers["content-type"].startswith("text/event-stream")
        async for ev in source.aiter_sse():
            events.append(ev)
    assert [e.event for e in events[:-1]] == ["row"] * 4 and events[-1].event == "done"
    rows = [e.json() for e in events[:-1]]
    assert sorted(r["index"] for r in rows) == [0, 1, 2, 3]
    assert rows[-1]["index"] == 0  # completion order: the slow row comes last
    assert all(e.id == str(e.json()["index"]) for e in events[:-1])
    by_index = {r["index"]: r["row"] for r in rows}
    assert by_index[2]["error"]["type"] == "llm_error" and by_index[1]["generation"] == "Echo: question number 1"
    done = events[-1].json()
    assert isinstance(done.pop("seed"), int)  # drawn for the request, as none was sent
    assert done == {"rows": 4, "failed": 1, "usage": {"input_tokens": 9, "output_tokens": 12, "cost_usd": 0.0, "cached_calls": 0}}


async def test_accept_header_selects_sse(service):
    r = await service.post("/tasks/text-generation", json={"rows": rows_of(1)},
                           headers={"accept": "text/event-stream"})
    assert r.headers["content-type"].startswith("text/event-stream")
    assert "event: done" in r.text


async def test_stream_tokens(service, mock):
    events = []
    async with aconnect_sse(service, "POST", "/tasks/text-generation", json={
            "rows": [{"instruction": "alpha beta gamma"}], "stream": True, "stream_tokens": True}) as source:
        async for ev in source.aiter_sse():
            events.append(ev)
    kinds = [e.event for e in events]
    assert kinds[-2:] == ["row", "done"] and set(kinds[:-2]) == {"token"} and len(kinds) > 3
    text = "".join(e.json()["text"] for e in events if e.event == "token")
    assert text == events[-2].json()["row"]["generation"] == "Echo: alpha beta gamma"
    assert mock.requests()[0]["body"]["stream"] is True


async def test_client_disconnect_cancels_pending_calls(service, mock):
    mock.configure(latency_ms=2000)
    mock.script([{"match": "number 0", "latency_ms": 0}])
    async with aconnect_sse(service, "POST", "/tasks/text-generation",
                            json={"rows": rows_of(40), "stream": True}) as source:
        async for ev in source.aiter_sse():
            assert ev.event == "row"
            break  # leave after the first row
    for _ in range(100):  # the 7 slow calls in flight are cut; the 32 queued never start
        stats = mock.stats()
        if stats["in_flight"] == 0:
            break
        await asyncio.sleep(0.05)
    assert stats["in_flight"] == 0
    await asyncio.sleep(0.3)
    assert mock.stats()["requests"] <= 9


async def test_unreachable_backend_marks_rows(mock):
    settings = mock_settings("http://127.0.0.1:9", max_retries=1)
    async with serve(settings) as client:
        body = (await client.post("/tasks/text-generation", json={"rows": rows_of(3)})).json()
    assert body["failed"] == 3
    assert all(r["error"]["type"] == "llm_error" for r in body["rows"])
