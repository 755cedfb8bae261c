"""GET /ui in chromium: the task list, a params form from params_schema, rows edited,
a run whose rows and tokens appear as they stream, a job submitted whose progress bar
reaches 100%, its live events, results downloaded, a job cancelled; /docs and /ui load
nothing from another host, nor does /redoc."""

from __future__ import annotations

import json
import os
import re

import httpx
from playwright.sync_api import Page, expect

from tests.jobs.conftest import RedisServer
from tests.ops.conftest import Process, wait_healthy
from tests.service import free_port


def fill_rows(page: Page, texts: list[str]) -> None:
    for i, text in enumerate(texts):
        if i:
            page.click("#add-row")
        page.locator("#rows tbody tr").nth(i).locator('textarea[name="instruction"]').fill(text)


def open_task(page: Page, url: str, name: str) -> None:
    page.goto(url + "/ui")
    page.get_by_role("button", name=name, exact=True).click()
    expect(page.locator("#title")).to_have_text(f"task {name}")


def test_submit_a_job_watch_it_finish_and_download(service, mock, page, tmp_path):
    mock.configure(latency_ms=100)
    open_task(page, service.url, "text-generation")
    fill_rows(page, [f"row {i}" for i in range(6)])
    page.fill('#llm input[name="max_new_tokens"]', "20")
    page.click("#submit-job")
    expect(page.locator("#message")).to_contain_text("submitted")
    job_id = re.search(r"job_\w+", page.locator("#message").inner_text()).group(0)
    row = page.locator(f'#jobs tr[data-job="{job_id}"]')
    expect(row.locator("td.status")).to_have_text("completed")
    expect(row.locator("td.progress")).to_contain_text("100%")
    expect(row.locator("td.progress")).to_contain_text("6/6")
    expect(page.locator("#job-title")).to_have_text(f"{job_id}: completed")
    expect(page.locator("#events")).to_contain_text("done: completed 6/6")
    expect(page.locator("#events li", has_text="row ")).to_have_count(6)

    page.select_option("#download-format", "jsonl")
    with page.expect_download() as download:
        page.click("#download-job")
    path = tmp_path / "results.jsonl"
    download.value.save_as(path)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["generation"] for r in rows] == [f"Echo: row {i}" for i in range(6)]
    assert all(r["index"] == i for i, r in enumerate(rows))
    sent = mock.requests()
    assert len(sent) == 6 and all(r["body"]["max_tokens"] == 20 for r in sent)


def test_a_file_submitted_from_the_page_and_a_bad_one_refused(service, mock, page, tmp_path):
    open_task(page, service.url, "text-generation")
    good = tmp_path / "prompts.csv"
    good.write_text("instruction,topic\nfile row 0,a\nfile row 1,b\nfile row 2,c\n")
    page.set_input_files("#rows-file", str(good))
    page.click("#submit-file")
    expect(page.locator("#message")).to_contain_text("submitted")
    job_id = re.search(r"job_\w+", page.locator("#message").inner_text()).group(0)
    expect(page.locator(f'#jobs tr[data-job="{job_id}"] td.progress')).to_contain_text("100%")
    bad = tmp_path / "bad.csv"
    bad.write_text("prompt\nno instruction column\n")
    page.set_input_files("#rows-file", str(bad))
    page.click("#submit-file")
    expect(page.locator("#message")).to_contain_text("422: file: bad.csv line 2: instruction")
    assert sorted(r["body"]["messages"][-1]["content"] for r in mock.requests()) == ["file row 0", "file row 1", "file row 2"]


def test_run_now_streams_tokens_then_rows(service, mock, page):
    mock.configure(chunk_delay_ms=30)
    open_task(page, service.url, "text-generation")
    fill_rows(page, ["alpha beta gamma delta", "one two"])
    page.click("#run")
    expect(page.locator("#message")).to_have_text(re.compile(r"done: 2 rows, 0 failed"))
    output = page.locator("#output tbody tr")
    expect(output).to_have_count(2)
    expect(page.locator('#output tr[data-key="0"] td[data-column="generation"]')).to_have_text("Echo: alpha beta gamma delta")
    expect(page.locator('#output tr[data-key="1"] td[data-column="model_name"]')).to_have_text("mock-model")
    assert all(r["body"].get("stream") for r in mock.requests())  # tokens came streamed


def test_params_form_from_the_schema_and_a_422_shown(service, mock, page):
    open_task(page, service.url, "generate-sentence-pair")
    action = page.locator('#params select[name="action"]')
    expect(action.locator("option")).to_have_text(["(default)", "paraphrase", "semantically-similar", "query", "answer"])
    expect(page.locator("#params label", has=page.locator('select[name="action"]'))).to_contain_text("action *")
    expect(page.locator('#params input[name="triplet"]')).not_to_be_checked()
    expect(page.locator("#rows thead th").first).to_have_text("anchor")
    page.locator('#rows textarea[name="anchor"]').fill("a sentence")
    page.click("#run")  # no action chosen: the server's 422 names it
    expect(page.locator("#message")).to_contain_text("422")
    expect(page.locator("#message")).to_contain_text("action")
    action.select_option("paraphrase")
    mock.script([{"reply": "## Positive\nanother sentence"}])
    page.click("#run")
    expect(page.locator('#output tr[data-key="0"] td[data-column="positive"]')).to_have_text("another sentence")


def test_retry_a_job_with_a_failed_row(service, mock, page):
    mock.script([{"match": "flaky", "status": 400}])
    open_task(page, service.url, "text-generation")
    fill_rows(page, ["steady 0", "flaky 1", "steady 2"])
    page.click("#submit-job")
    expect(page.locator("#message")).to_contain_text("submitted")
    job_id = re.search(r"job_\w+", page.locator("#message").inner_text()).group(0)
    row = page.locator(f'#jobs tr[data-job="{job_id}"]')
    expect(row.locator("td.progress")).to_contain_text("3/3, 1 failed")
    expect(page.locator("#events")).to_contain_text("row 1 failed")
    mock.reset()
    page.click("#retry-job")
    expect(page.locator("#job-title")).to_have_text(f"{job_id}: completed")
    expect(row.locator("td.progress")).to_have_text(re.compile(r"100%\s*3/3$"))
    assert [r["body"]["messages"][-1]["content"] for r in mock.requests()] == ["flaky 1"]


def test_cancel_a_running_job(service, mock, page):
    mock.configure(latency_ms=2000)
    open_task(page, service.url, "text-generation")
    fill_rows(page, [f"slow {i}" for i in range(12)])
    page.click("#submit-job")
    expect(page.locator("#message")).to_contain_text("submitted")
    expect(page.locator("#job-title")).to_contain_text("running")
    page.click("#cancel-job")
    expect(page.locator("#job-title")).to_contain_text("cancelled")
    expect(page.locator("#events")).to_contain_text("done: cancelled")


def test_ui_and_docs_load_nothing_from_another_host(service, page):
    requested: list[str] = []
    page.on("request", lambda request: requested.append(request.url))
    page.goto(service.url + "/docs")
    expect(page.locator(".swagger-ui .info .title")).to_contain_text("synthserve")
    expect(page.locator(".opblock-summary-path", has_text="/jobs/{job_id}/results").first).to_be_visible()
    page.goto(service.url + "/ui")
    expect(page.locator("#tasks li").first).to_be_visible()
    local = (service.url + "/", "blob:", "data:")
    assert requested and [url for url in requested if not url.startswith(local)] == []
    assert any(url.endswith("/swagger-ui-bundle.js") for url in requested)
    html = "".join(page.request.get(service.url + path).text() for path in ("/docs", "/ui"))
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", html)


def test_the_page_with_api_keys(mock, page, tmp_path):
    """A server with keys: the page asks for one, sends it as Authorization: Bearer, keeps it."""
    redis = RedisServer(tmp_path)
    config = tmp_path / "keys.toml"
    config.write_text(f'[server]\napi_keys_env = "UI_TEST_KEYS"\n[backends.mock]\nprovider = "openai"\n'
                      f'base_url = "{mock.url}/v1"\nmodel = "mock-model"\n'
                      f'[jobs]\nredis_url = "{redis.url}"\nconsume = true\n')
    server = Process(["serve", "--config", str(config), "--port", str(port := free_port())], tmp_path / "serve.log",
                     {**os.environ, "PYTHONUNBUFFERED": "1", "UI_TEST_KEYS": "page-key"})
    try:
        url = f"http://127.0.0.1:{port}"
        wait_healthy(url, server)
        page.goto(url + "/ui")
        expect(page.locator("#message")).to_contain_text("401")
        page.fill("#api-key", "page-key")
        page.locator("#api-key").dispatch_event("change")
        open_task(page, url, "text-generation")  # a reload: the key was kept
        fill_rows(page, ["with a key"])
        page.click("#submit-job")
        expect(page.locator("#message")).to_contain_text("submitted")
        job_id = re.search(r"job_\w+", page.locator("#message").inner_text()).group(0)
        expect(page.locator(f'#jobs tr[data-job="{job_id}"] td.status')).to_have_text("completed")
        assert httpx.get(f"{url}/jobs/{job_id}", headers={"Authorization": "Bearer page-key"}).status_code == 200
    finally:
        server.close()
        redis.close()
