"""Pipeline throughput (issue 11): a 3-step chat pipeline (three text-generation steps,
each answering the previous one's output) on one backend, the mock at 100 ms,
max_concurrency 64, 2,000 input rows. Printed as ratios, in one run:

1. rows/s of one POST /pipelines over the backend's limit 64 / (3 x 0.1 s) = 213 rows/s:
   steps overlap, so the limit is the backend's, not a sum of step times (goal >= 0.85);
2. time to the first final row over SSE, 2,000 rows asked (goal <= 3 x latency + 100 ms):
   the median of 5 streams, each closed after its first row;
3. the same pipeline as a job, two workers over one (goal >= 1.8x), each worker with its
   own limit of 64, on a temporary redis-server;
4. distilabel 1.5.3 on the same mock and pipeline (Pipeline, LoadDataFromDicts and three
   TextGeneration steps on OpenAILLM, input batches of 64), run by the interpreter of a
   separate venv (default /tmp/distilabel-venv, never the project's): its rows/s, and ours
   over it. Left out, saying so, when that venv is missing.

    .venv/bin/python bench/pipeline_throughput.py [--rows 2000] [--latency-ms 100] [--concurrency 64]
        [--distilabel-python /tmp/distilabel-venv/bin/python]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import tempfile
import textwrap
import time
from pathlib import Path

import httpx

from common import backend_toml, mock_llm, service  # (puts the repository on sys.path)

from tests.jobs.conftest import RedisServer, WorkerProcess, jobs_settings, settings_toml
from tests.service import serve

PIPELINE = {"name": "three-chats", "steps": [
    {"name": "first", "task": "text-generation", "output_mappings": {"generation": "first"}},
    {"name": "second", "task": "text-generation", "input_mappings": {"instruction": "first"},
     "output_mappings": {"generation": "second"}},
    {"name": "third", "task": "text-generation", "input_mappings": {"instruction": "second"},
     "output_mappings": {"generation": "third"}},
]}


def rows(n: int) -> list[dict]:
    return [{"instruction": f"Write a short fact about item {i}."} for i in range(n)]


def request_rate(url: str, n: int) -> float:
    t0 = time.perf_counter()
    body = {"pipeline": PIPELINE, "rows": rows(n), "include_raw": False, "cache": False}
    r = httpx.post(url + "/pipelines", json=body, timeout=600)
    elapsed = time.perf_counter() - t0
    body = r.json()
    assert r.status_code == 200 and body["failed"] == 0 and len(body["rows"]) == n, r.text[:300]
    return n / elapsed


def first_row_ms(client: httpx.Client, url: str, n: int) -> float:
    """From sending the request to its first `row` event, on a client made beforehand (making
    an httpx client costs 20-40 ms of SSL set-up) and a server at rest (the previous stream's
    cancelled calls wound down)."""
    content = json.dumps({"pipeline": PIPELINE, "rows": rows(n), "include_raw": False, "stream": True,
                          "cache": False}).encode()
    time.sleep(1.0)
    t0 = time.perf_counter()
    with client.stream("POST", url + "/pipelines", content=content,
                       headers={"Content-Type": "application/json"}) as r:
        for line in r.iter_lines():
            if line.startswith("event: row"):
                return (time.perf_counter() - t0) * 1000
    raise RuntimeError("no row event")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100  # utime + stime, in clock ticks


async def job_rate(mock, redis_server: RedisServer, tmp: Path, workers: int, n: int,
                   concurrency: int) -> tuple[float, float]:
    """-> (rows/s from POST to completed, the workers' CPU ms per row)"""
    redis_server.client.flushall()
    settings = jobs_settings(mock.url, redis_server.url, max_concurrency=concurrency, claim_idle_ms=5000)
    config = tmp / f"pipeline-bench-{workers}.toml"
    config.write_text(settings_toml(settings))
    procs = [WorkerProcess(config, tmp / f"worker-{workers}-{i}.log") for i in range(workers)]
    try:
        for p in procs:
            p.wait_ready()
        async with serve(settings) as client:
            cpu0 = sum(cpu_seconds(p.proc.pid) for p in procs)
            start = time.perf_counter()
            r = await client.post("/jobs", json={"pipeline": PIPELINE, "rows": rows(n), "include_raw": False,
                                                 "cache": False})
            r.raise_for_status()
            job_id = r.json()["id"]
            while True:
                await asyncio.sleep(0.1)
                job = (await client.get(f"/jobs/{job_id}")).json()
                if job["status"] not in ("queued", "running"):
                    break
            wall = time.perf_counter() - start
            cpu = sum(cpu_seconds(p.proc.pid) for p in procs) - cpu0
            assert job["status"] == "completed" and job["progress"]["completed"] == n, job
            assert job["progress"]["steps"]["third"]["rows_out"] == n, job
    finally:
        for p in procs:
            p.terminate()
            p.close()
    return n / wall, cpu / n * 1000


DISTILABEL = textwrap.dedent("""
    import json, sys, time
    from distilabel.models import OpenAILLM
    from distilabel.pipeline import Pipeline
    from distilabel.steps import LoadDataFromDicts
    from distilabel.steps.tasks import TextGeneration

    base_url, n, batch, cache_dir = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    data = [{"instruction": f"Write a short fact about item {i}."} for i in range(n)]

    def llm():
        return OpenAILLM(model="mock-model", base_url=base_url, api_key="mock", max_retries=0, timeout=60)

    with Pipeline(name="three-chats", cache_dir=cache_dir) as pipeline:
        load = LoadDataFromDicts(data=data, batch_size=batch)
        first = TextGeneration(llm=llm(), input_batch_size=batch, output_mappings={"generation": "first"})
        second = TextGeneration(llm=llm(), input_batch_size=batch, input_mappings={"instruction": "first"},
                                output_mappings={"generation": "second"})
        third = TextGeneration(llm=llm(), input_batch_size=batch, input_mappings={"instruction": "second"},
                               output_mappings={"generation": "third"})
        load >> first >> second >> third

    if __name__ == "__main__":
        t0 = time.perf_counter()
        distiset = pipeline.run(use_cache=False)
        seconds = time.perf_counter() - t0
        out = distiset["default"]["train"]
        print(json.dumps({"rows": len(out), "seconds": seconds, "third": out[0]["third"]}))
""")


def distilabel_rate(python: str, mock_url: str, n: int, batch: int) -> float | None:
    if not Path(python).exists():
        print(f"distilabel: not run ({python} missing; install it apart from the project: "
              "python3 -m venv /tmp/distilabel-venv && /tmp/distilabel-venv/bin/pip install distilabel==1.5.3 openai requests)")
        return None
    with tempfile.TemporaryDirectory(prefix="distilabel-bench-") as tmp:
        script = Path(tmp) / "pipeline.py"
        script.write_text(DISTILABEL)
        done = subprocess.run([python, str(script), mock_url + "/v1", str(n), str(batch), str(Path(tmp) / "cache")],
                              capture_output=True, text=True, timeout=1800, cwd=tmp)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        print(f"distilabel: failed (exit {done.returncode}): {done.stderr[-600:]}")
        return None
    result = json.loads(lines[-1])
    assert result["rows"] == n and result["third"].startswith("Echo: "), result
    return n / result["seconds"]


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=2000)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--latency-ms", type=float, default=100)
    ap.add_argument("--distilabel-python", default="/tmp/distilabel-venv/bin/python")
    args = ap.parse_args()
    latency_s = args.latency_ms / 1000
    limit = args.concurrency / (3 * latency_s)

    with mock_llm(args.latency_ms) as mock, tempfile.TemporaryDirectory(prefix="pipeline-bench-") as tmp:
        config = backend_toml(mock.url, args.concurrency) + f'\n[jobs]\ndata_dir = "{tmp}/private"\n'
        with service(config) as url:
            request_rate(url, 200)  # warm up connections
            rate = await asyncio.to_thread(request_rate, url, args.rows)
            print(f"1. one request, {args.rows} rows, 3 steps, {args.latency_ms:g} ms, max_concurrency "
                  f"{args.concurrency}: {rate:.0f} rows/s = {rate / limit:.2f} of the limit {limit:.0f}/s "
                  f"(goal >= 0.85)", flush=True)
            with httpx.Client(timeout=60) as client:
                firsts = [await asyncio.to_thread(first_row_ms, client, url, args.rows) for _ in range(5)]
            first = statistics.median(firsts)
            goal = 3 * args.latency_ms + 100
            print(f"2. first final row over SSE ({args.rows} rows asked): median {first:.0f} ms of 5 "
                  f"(min {min(firsts):.0f}, max {max(firsts):.0f}) = {first / goal:.2f} of the goal "
                  f"3 x {args.latency_ms:g} + 100 = {goal:.0f} ms (goal <= 1)", flush=True)

        redis_server = RedisServer(Path(tmp))
        try:
            mock.configure(latency_ms=args.latency_ms)
            one, cpu_one = await job_rate(mock, redis_server, Path(tmp), 1, args.rows, args.concurrency)
            two, cpu_two = await job_rate(mock, redis_server, Path(tmp), 2, args.rows, args.concurrency)
        finally:
            redis_server.close()
        print(f"3. as a job: one worker {one:.0f} rows/s ({one / limit:.2f} of its limit), two workers "
              f"{two:.0f} rows/s: {two / one:.2f}x (goal >= 1.8x); workers' CPU per row (3 calls): "
              f"{cpu_one:.1f} ms with one, {cpu_two:.1f} ms with two", flush=True)

        mock.configure(latency_ms=args.latency_ms)
        theirs = distilabel_rate(args.distilabel_python, mock.url, args.rows, args.concurrency)
        if theirs is not None:
            print(f"4. distilabel 1.5.3, same mock and pipeline (input batches of {args.concurrency}): "
                  f"{theirs:.0f} rows/s = {theirs / limit:.2f} of the limit; synthserve / distilabel: "
                  f"{rate / theirs:.2f}x", flush=True)


if __name__ == "__main__":
    asyncio.run(main())
