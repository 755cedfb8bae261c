"""Jobs throughput through Redis: a text-generation job against the mock LLM server.

    python bench/jobs_throughput.py [--rows 5000] [--latency-ms 100] [--concurrency 64]
        [--workers 1,2]

Starts its own mock, redis-server (temporary, on a free port) and worker processes
(`python -m app.cli worker`), submits the job through the HTTP API (the app served in
this process) and times it from POST /jobs to `completed`. Each worker has its own
backend limit, so the physical limit is workers * concurrency / latency rows per second
(640/s for one worker at 64 in flight and 100 ms). Printed per run: rows/s, the ratio to
that limit (goal >= 0.85 with one worker), the rate between the job's started_at and
finished_at, and the CPU time per row of the workers and of the mock; then the speed-up of
two workers over one (goal >= 1.8x), end to end. Last, the default set-up: no redis_url,
so the served app starts its private redis-server and runs the job itself; its rate over
one worker's on the configured Redis (goal >= 0.9).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.conftest import start_mock_llm  # noqa: E402
from tests.jobs.conftest import RedisServer, WorkerProcess, jobs_settings, settings_toml  # noqa: E402
from tests.service import serve  # noqa: E402


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100  # utime + stime, in clock ticks


async def one_run(mock, redis_server: RedisServer, tmp: Path, workers: int, rows: int, concurrency: int,
                  latency_ms: float) -> dict:
    redis_server.client.flushall()
    settings = jobs_settings(mock.url, redis_server.url, max_concurrency=concurrency, claim_idle_ms=5000)
    config = tmp / f"bench-{workers}.toml"
    config.write_text(settings_toml(settings))
    procs = [WorkerProcess(config, tmp / f"worker-{workers}-{i}.log") for i in range(workers)]
    try:
        for p in procs:
            p.wait_ready()
        mock.configure(latency_ms=latency_ms)
        async with serve(settings) as client:
            cpu0, mock_cpu0 = sum(cpu_seconds(p.proc.pid) for p in procs), cpu_seconds(mock.proc.pid)
            api_cpu0 = time.process_time()
            job, wall, submit = await timed_job(client, rows)
            cpu = sum(cpu_seconds(p.proc.pid) for p in procs) - cpu0
            mock_cpu = cpu_seconds(mock.proc.pid) - mock_cpu0
            api_cpu = time.process_time() - api_cpu0
    finally:
        for p in procs:
            p.terminate()
            p.close()
    limit = workers * concurrency / (latency_ms / 1000)
    working = (parse_time(job["finished_at"]) - parse_time(job["started_at"])).total_seconds()
    return {"workers": workers, "rows_per_s": rows / wall, "limit": limit, "ratio": rows / wall / limit,
            "wall_s": wall, "submit_s": submit, "working_rows_per_s": rows / working,
            "cpu_ms_per_row": cpu / rows * 1000, "mock_cpu_ms_per_row": mock_cpu / rows * 1000,
            "api_cpu_ms_per_row": api_cpu / rows * 1000}


async def timed_job(client, rows: int) -> tuple[dict, float, float]:
    """Submit the job and poll it: -> (the finished job, seconds from POST to completed, of POST)."""
    body = {"task": "text-generation", "include_raw": False,
            "rows": [{"instruction": f"Write a haiku about the number {i}."} for i in range(rows)]}
    start = time.perf_counter()
    r = await client.post("/jobs", json=body)
    r.raise_for_status()
    job_id = r.json()["id"]
    submit = time.perf_counter() - start
    while True:
        await asyncio.sleep(0.1)
        job = (await client.get(f"/jobs/{job_id}")).json()
        if job["status"] != "running" and job["status"] != "queued":
            break
    wall = time.perf_counter() - start
    assert job["status"] == "completed" and job["progress"]["completed"] == rows, job
    return job, wall, submit


async def default_setup_run(mock, tmp: Path, rows: int, concurrency: int, latency_ms: float) -> tuple[float, float]:
    """The default set-up (no redis_url): the app's private Redis and its own worker; -> (rows/s,
    CPU ms per row of this process: the API, the bench's client and the worker)."""
    settings = jobs_settings(mock.url, None, max_concurrency=concurrency, claim_idle_ms=5000,
                             data_dir=str(tmp / "private"))
    mock.configure(latency_ms=latency_ms)
    async with serve(settings) as client:
        cpu0 = time.process_time()
        _, wall, _ = await timed_job(client, rows)
        cpu = time.process_time() - cpu0
    return rows / wall, cpu / rows * 1000


def parse_time(stamp: str) -> datetime:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00"))


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=5000)
    parser.add_argument("--latency-ms", type=float, default=100)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--workers", default="1,2", help="comma-separated worker counts to run")
    args = parser.parse_args()

    mock = start_mock_llm()
    with tempfile.TemporaryDirectory(prefix="jobs-bench-") as tmp:
        redis_server = RedisServer(Path(tmp))
        try:
            runs = []
            for n in (int(x) for x in args.workers.split(",")):
                run = await one_run(mock, redis_server, Path(tmp), n, args.rows, args.concurrency, args.latency_ms)
                runs.append(run)
                print(f"{n} worker{'s' if n > 1 else ' '}: {run['rows_per_s']:7.1f} rows/s  limit {run['limit']:.0f}/s"
                      f"  ratio {run['ratio']:.3f}  ({run['wall_s']:.2f} s from POST to completed, of which"
                      f" POST {run['submit_s']:.2f} s; started_at..finished_at: {run['working_rows_per_s']:.1f} rows/s;"
                      f" CPU per row: workers {run['cpu_ms_per_row']:.2f} ms,"
                      f" mock {run['mock_cpu_ms_per_row']:.2f} ms)",
                      flush=True)
            by = {r["workers"]: r for r in runs}
            if 1 in by and 2 in by:
                print(f"two workers / one worker: {by[2]['rows_per_s'] / by[1]['rows_per_s']:.2f}x (goal >= 1.8x)")
            if 1 in by:
                print(f"one worker vs limit: {by[1]['ratio']:.3f} (goal >= 0.85)")
                private, cpu = await default_setup_run(mock, Path(tmp), args.rows, args.concurrency,
                                                       args.latency_ms)
                one = by[1]
                print(f"default set-up (private Redis, the API's own worker): {private:7.1f} rows/s;"
                      f" / one worker on a configured Redis: {private / one['rows_per_s']:.3f} (goal >= 0.9);"
                      f" CPU per row {cpu:.2f} ms in one process, against {one['cpu_ms_per_row']:.2f} ms (worker)"
                      f" + {one['api_cpu_ms_per_row']:.2f} ms (API and client) in two", flush=True)
        finally:
            redis_server.close()
            mock.close()


if __name__ == "__main__":
    try:  # the loop `synthserve serve` (uvicorn) and `synthserve worker` run on
        from uvloop import run
    except ImportError:  # pragma: no cover
        run = asyncio.run
    run(main())
