"""A job's rows are stored and served as strict JSON whatever the LLM answered: an answer
holding Infinity or a lone surrogate neither fails the job's chunk nor cuts /results off."""

from __future__ import annotations

import json

import httpx

from tests.app.test_hostile_bodies import strict
from tests.jobs.conftest import wait_job


async def test_job_rows_with_infinity_and_lone_surrogates_are_served_as_json(service, mock):
    rules = [{"match": "doc", "reply": '{"user_query": Infinity, "positive_document": "p \\ud800", '
                                       '"hard_negative_document": NaN}'}]
    httpx.post(mock.url + "/_mock/script", content=json.dumps(rules)).raise_for_status()  # ASCII escapes
    r = await service.post("/jobs", json={"task": "text-retrieval-data", "rows": [{"task": "doc"}] * 3})
    assert r.status_code == 202, r.text
    job = await wait_job(service, r.json()["id"])
    assert job["progress"]["completed"] == 3
    text = (await service.get(f"/jobs/{job['id']}/results")).text
    rows = [strict(line) for line in text.splitlines()]
    assert len(rows) == 3
    assert all(row["user_query"] is None and row["positive_document"] == "p \ufffd" for row in rows)


async def test_checkpointed_answers_with_a_lone_surrogate_do_not_stop_the_job(service, mock):
    rules = [{"reply": "Prompt#: evolved \ud800 text"}]
    httpx.post(mock.url + "/_mock/script", content=json.dumps(rules)).raise_for_status()
    r = await service.post("/jobs", json={"task": "evol-instruct", "rows": [{"instruction": "seed"}] * 2,
                                          "params": {"num_evolutions": 2}})
    assert r.status_code == 202, r.text
    job = await wait_job(service, r.json()["id"])
    rows = [strict(line) for line in (await service.get(f"/jobs/{job['id']}/results")).text.splitlines()]
    assert [row["evolved_instruction"] for row in rows] == ["evolved \ufffd text"] * 2
