"""generate-embeddings against the mock's /embed route (TGI protocol)."""

from __future__ import annotations

from .conftest import run_task


async def test_embeddings(embed_service, mock):
    rows = [{"text": "The quick brown fox."}, {"text": [{"role": "user", "content": "The quick brown fox."}]},
            {"text": "Something else entirely."}]
    out = await run_task(embed_service, "generate-embeddings", rows)
    assert out["failed"] == 0
    vectors = [r["embedding"] for r in out["rows"]]
    assert all(len(v) == 16 and all(isinstance(x, float) for x in v) for v in vectors)
    assert vectors[0] == vectors[1] != vectors[2]  # a string is one user message, chat-templated
    assert out["rows"][1]["text"] == rows[1]["text"] and out["rows"][0]["metadata"]["llm_calls"] == 1
    sent = [r["body"]["inputs"] for r in mock.requests() if r["route"] == "/embed"]
    assert sorted(map(str, sent)) == sorted(map(str, [[[{"role": "user", "content": "The quick brown fox."}]]] * 2
                                                + [[[{"role": "user", "content": "Something else entirely."}]]]))


async def test_bad_text_is_422_without_calls(embed_service, mock):
    for text in (None, 5, [], [{"role": "robot", "content": "x"}], [{"role": "user"}]):
        response = await embed_service.post("/tasks/generate-embeddings", json={"rows": [{"text": "ok"}, {"text": text}]})
        assert response.status_code == 422 and "rows[1].text" in response.text
    assert mock.stats()["requests"] == 0


async def test_a_backend_without_hidden_states_is_422_without_calls(service, mock):
    response = await service.post("/tasks/generate-embeddings", json={"rows": [{"text": "hi"}]})
    assert response.status_code == 422 and "embed" in response.text
    assert mock.stats()["requests"] == 0


async def test_embed_failure_marks_the_row(embed_service, mock):
    mock.script([{"route": "/embed", "match": "doomed", "status": 400}])
    out = await run_task(embed_service, "generate-embeddings", [{"text": "doomed"}, {"text": "fine"}])
    doomed, fine = out["rows"]
    assert doomed["error"]["type"] == "llm_error" and doomed["embedding"] is None
    assert fine["error"] is None and len(fine["embedding"]) == 16


async def test_a_plain_tgi_server_is_422_without_calls(tgi_service, mock):
    # a real TGI has no /embed: only a server whose /info names the sidecar gets embeddings
    response = await tgi_service.post("/tasks/generate-embeddings", json={"rows": [{"text": "hi"}]})
    assert response.status_code == 422 and "embed" in response.text
    assert "/embed" not in mock.stats()["by_route"]
