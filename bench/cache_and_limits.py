"""Cache, rate limits and adaptive concurrency (issue 12): ratios measured in one run.

    .venv/bin/python bench/cache_and_limits.py [--parts rerun,adaptive,rpm,overhead,lookup]
        [--rows 5000] [--rpm-window-s 60]

1. rerun     a finished 5,000-row job submitted again: LLM calls of the re-run (goal 0)
             and its time / the first run's (goal <= 0.10). Mock at 100 ms, max_concurrency 64.
2. adaptive  a mock answering 429 above 32 in flight (Retry-After 1 s), max_concurrency 128,
             adaptive on: rows/s / (32 / latency) (goal >= 0.85) and the share of calls
             answered 429 (goal <= 0.05).
3. rpm       rpm = 600 shared by two workers running a job and the API serving /tasks, on
             one Redis: calls reaching the mock in one minute / 600 (goal <= 1 + one
             bucket's burst, 10 calls: 1.017).
4. overhead  POST /tasks/text-generation at 64 and at 256 in flight (mock at 100 ms), with
             the cache (every call a miss: lookup and store), adaptive and rpm/tpm limits
             on, / a raw aiohttp client at the same concurrency against the same mock
             (goal >= 0.9).
5. lookup    at 0 ms latency: rows/s with the cache on (misses) / with `cache: false`
             (goal >= 0.8); best of three alternating runs each.

Every part starts its own service process (`synthserve serve`) on a temporary redis-server;
the mock runs in its own process. The machine is shared: figures are noisy.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import aiohttp
import httpx

from common import ROOT, mock_llm, service

sys.path.insert(0, str(ROOT))
from tests.jobs.conftest import RedisServer, WorkerProcess  # noqa: E402

LATENCY_MS = 100


def config_toml(mock_url: str, redis_url: str, *, max_concurrency: int, consume: bool = False,
                **backend) -> str:
    fields = {"provider": "openai", "base_url": mock_url + "/v1", "model": "mock-model",
              "max_concurrency": max_concurrency, "max_retries": 10, "timeout_s": 60, **backend}
    lines = ["[backends.mock]", *(f"{k} = {json.dumps(v)}" for k, v in fields.items()),
             "[jobs]", f"redis_url = {json.dumps(redis_url)}", f"consume = {json.dumps(consume)}"]
    return "\n".join(lines) + "\n"


def rows_of(n: int, tag: str) -> list[dict]:
    return [{"instruction": f"Write a short fact about item {i} ({tag})."} for i in range(n)]


def calls(mock) -> int:
    return mock.stats()["requests"]


def post_rows(url: str, rows: list[dict], **body) -> float:
    """rows/s of one POST /tasks/text-generation."""
    t0 = time.perf_counter()
    r = httpx.post(url + "/tasks/text-generation", json={"rows": rows, "include_raw": False, **body}, timeout=900)
    elapsed = time.perf_counter() - t0
    out = r.json()
    assert r.status_code == 200 and out["failed"] == 0 and len(out["rows"]) == len(rows), r.text[:300]
    return len(rows) / elapsed


def run_job(url: str, body: dict) -> tuple[float, dict]:
    t0 = time.perf_counter()
    r = httpx.post(url + "/jobs", json=body, timeout=300)
    r.raise_for_status()
    job_id = r.json()["id"]
    while True:
        job = httpx.get(f"{url}/jobs/{job_id}", timeout=30).json()
        if job["status"] not in ("queued", "running"):
            return time.perf_counter() - t0, job
        time.sleep(0.01)  # fine-grained: the re-run lasts under a second


# ---- the parts ----

def part_rerun(mock, redis: RedisServer, rows: int) -> None:
    mock.configure(latency_ms=LATENCY_MS)
    with service(config_toml(mock.url, redis.url, max_concurrency=64, consume=True)) as url:
        body = {"task": "text-generation", "include_raw": False, "rows": rows_of(rows, "rerun")}
        first_s, first = run_job(url, body)
        before = calls(mock)
        again_s, again = run_job(url, body)
        made = calls(mock) - before
    assert first["status"] == again["status"] == "completed", (first, again)
    print(f"rerun: {rows} rows: first {first_s:.2f} s, re-run {again_s:.2f} s = {again_s / first_s:.3f} of it "
          f"(goal <= 0.10); LLM calls in the re-run: {made} (goal 0); re-run usage.cached_calls "
          f"{again['usage'].get('cached_calls')}", flush=True)


def part_adaptive(mock, redis: RedisServer, rows: int) -> None:
    mock.configure(latency_ms=LATENCY_MS)
    # what this machine gives at exactly 32 in flight, with no 429 at all: the adaptive run's yardstick
    with service(config_toml(mock.url, redis.url, max_concurrency=32)) as url:
        post_rows(url, rows_of(300, "fixed warm-up"), cache=False)
        fixed = post_rows(url, rows_of(rows, "fixed"), cache=False)
    mock.configure(max_in_flight=32, retry_after_s=1)
    try:
        with service(config_toml(mock.url, redis.url, max_concurrency=128, adaptive=True)) as url:
            post_rows(url, rows_of(300, "adaptive warm-up"), cache=False)
            before = mock.stats()
            rate = post_rows(url, rows_of(rows, "adaptive"), cache=False)
            after = mock.stats()
    finally:
        mock.configure(max_in_flight=None)
    made = after["requests"] - before["requests"]
    refused = after["rate_limited"] - before["rate_limited"]
    ceiling = 32 / (LATENCY_MS / 1000)
    print(f"adaptive: {rows} rows at {rate:.0f} rows/s = {rate / ceiling:.3f} of 32/latency = {ceiling:.0f}/s "
          f"(goal >= 0.85); 429s: {refused} of {made} calls = {refused / made:.3f} (goal <= 0.05); "
          f"a fixed limit of 32 against the same mock without its ceiling: {fixed:.0f} rows/s = "
          f"{fixed / ceiling:.3f} of 32/latency, adaptive / fixed = {rate / fixed:.3f}", flush=True)


def part_rpm(mock, redis: RedisServer, tmp: Path, window_s: float) -> None:
    mock.configure(latency_ms=LATENCY_MS)
    toml = config_toml(mock.url, redis.url, max_concurrency=64, rpm=600)
    config = tmp / "rpm.toml"
    config.write_text(toml)
    workers = [WorkerProcess(config, tmp / f"rpm-worker-{i}.log") for i in range(2)]
    try:
        for w in workers:
            w.wait_ready()
        with service(toml) as url:
            start = calls(mock)
            r = httpx.post(url + "/jobs", json={"task": "text-generation", "include_raw": False,
                                                "rows": rows_of(2000, "rpm job")}, timeout=60)
            r.raise_for_status()
            stop = threading.Event()

            def api_load() -> None:  # the API's own calls, as a client keeps it busy
                with httpx.Client(base_url=url, timeout=None) as client:
                    with client.stream("POST", "/tasks/text-generation",
                                       json={"rows": rows_of(1000, "rpm api"), "stream": True}) as s:
                        for _ in s.iter_lines():
                            if stop.is_set():
                                return

            loader = threading.Thread(target=api_load, daemon=True)
            loader.start()
            time.sleep(window_s)
            made = calls(mock) - start
            stop.set()
            httpx.post(f"{url}/jobs/{r.json()['id']}/cancel", timeout=30)
    finally:
        for w in workers:
            w.terminate()
            w.close()
    per_minute = made * 60 / window_s
    print(f"rpm: rpm = 600, two workers + the API: {made} calls in {window_s:g} s = {per_minute:.0f}/min = "
          f"{per_minute / 600:.3f} of 600 (goal <= {1 + 10 / 600:.3f})", flush=True)


async def raw_client(mock_url: str, n: int, concurrency: int, tag: str) -> float:
    """rows/s of a bare aiohttp loop making the same calls: the machine's ceiling."""
    connector = aiohttp.TCPConnector(limit=concurrency, limit_per_host=0)
    slots = asyncio.Semaphore(concurrency)
    url = mock_url + "/v1/chat/completions"

    async def one(session: aiohttp.ClientSession, i: int) -> None:
        body = {"model": "mock-model", "messages": [{"role": "user", "content": f"Write a short fact about item {i} ({tag})."}]}
        async with slots, session.post(url, data=json.dumps(body).encode(),
                                       headers={"Content-Type": "application/json"}) as r:
            json.loads(await r.read())["choices"][0]["message"]["content"]

    async with aiohttp.ClientSession(connector=connector) as session:
        await asyncio.gather(*(one(session, i) for i in range(concurrency * 2)))
        t0 = time.perf_counter()
        await asyncio.gather(*(one(session, i) for i in range(n)))
        return n / (time.perf_counter() - t0)


def part_overhead(mock, redis: RedisServer) -> None:
    mock.configure(latency_ms=LATENCY_MS)
    for concurrency, n in ((64, 3000), (256, 6000)):
        limits = {"adaptive": True, "rpm": 10_000_000, "tpm": 10_000_000_000}
        with service(config_toml(mock.url, redis.url, max_concurrency=concurrency, **limits)) as url:
            post_rows(url, rows_of(concurrency * 2, f"warm {concurrency}"))
            ours = post_rows(url, rows_of(n, f"overhead {concurrency} {uuid.uuid4().hex[:6]}"))
            uncached = post_rows(url, rows_of(n, f"uncached {concurrency}"), cache=False)
        raw = asyncio.run(raw_client(mock.url, n, concurrency, f"raw {concurrency}"))
        print(f"overhead: /tasks at {concurrency} in flight, cache + limits on: {ours:.0f} rows/s; raw aiohttp "
              f"{raw:.0f} calls/s; ratio {ours / raw:.3f} (goal >= 0.9); the same /tasks with cache: false "
              f"{uncached:.0f} rows/s = {uncached / raw:.3f} of raw", flush=True)


def part_lookup(mock, redis: RedisServer) -> None:
    mock.configure(latency_ms=0)
    with service(config_toml(mock.url, redis.url, max_concurrency=64)) as url:
        post_rows(url, rows_of(500, "lookup warm-up"))
        on, off = [], []
        for i in range(3):
            off.append(post_rows(url, rows_of(3000, f"off {i}"), cache=False))
            on.append(post_rows(url, rows_of(3000, f"on {i} {uuid.uuid4().hex[:6]}")))
    print(f"lookup: 0 ms latency, 3000 rows: cache on {max(on):.0f} rows/s, off {max(off):.0f} rows/s; "
          f"ratio {max(on) / max(off):.3f} (goal >= 0.8)", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--parts", default="rerun,adaptive,rpm,overhead,lookup")
    parser.add_argument("--rows", type=int, default=5000)
    parser.add_argument("--rpm-window-s", type=float, default=60)
    args = parser.parse_args()
    parts = args.parts.split(",")
    with tempfile.TemporaryDirectory(prefix="cache-bench-") as tmp, mock_llm(LATENCY_MS) as mock:
        redis = RedisServer(Path(tmp))
        try:
            for part in parts:
                redis.client.flushall()
                mock.reset()
                if part == "rerun":
                    part_rerun(mock, redis, args.rows)
                elif part == "adaptive":
                    part_adaptive(mock, redis, 3000)
                elif part == "rpm":
                    part_rpm(mock, redis, Path(tmp), args.rpm_window_s)
                elif part == "overhead":
                    part_overhead(mock, redis)
                elif part == "lookup":
                    part_lookup(mock, redis)
                else:
                    raise SystemExit(f"unknown part {part!r}")
        finally:
            redis.close()


if __name__ == "__main__":
    main()
