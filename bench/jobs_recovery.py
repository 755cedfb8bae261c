"""Recovery after a worker's kill -9: how long its rows stand still.

    python bench/jobs_recovery.py [--rows 3000] [--latency-ms 100] [--concurrency 16]
        [--claim-idle-ms 5000]

Starts its own mock (at --latency-ms), redis-server and workers, submits a text-generation
job, and once it is under way kills one worker with SIGKILL. Its chunks stay claimed until
they have been idle for `jobs.claim_idle_ms`; then a live worker takes them over with
XAUTOCLAIM. Measured from the kill, for the units the dead worker held and had not
finished: when the first chunk changes hands, when the first of those rows is stored
("moving again", goal <= 10 s) and when the last is. Two scenarios: another worker was
running all along; or none was, and the killed one is restarted at once.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app.jobs import keys  # noqa: E402
from tests.conftest import start_mock_llm  # noqa: E402
from tests.jobs.conftest import RedisServer, WorkerProcess, jobs_settings, settings_toml  # noqa: E402
from tests.service import serve  # noqa: E402


def held_by(r, pid: int) -> dict[str, list[int]]:
    """The chunks (entry -> units) a worker process holds, by its consumer name (host-pid-x)."""
    held = {}
    for p in r.xpending_range(keys.QUEUE, keys.GROUP, "-", "+", 10_000):
        if p["consumer"].split("-")[-2] == str(pid):
            entry = r.xrange(keys.QUEUE, p["message_id"], p["message_id"])
            if entry:
                held[p["message_id"]] = [int(u) for u in entry[0][1]["units"].split(",")]
    return held


async def scenario(mock, redis_server: RedisServer, tmp: Path, *, survivor: bool, rows: int,
                   concurrency: int, latency_ms: float, claim_idle_ms: int) -> dict:
    r = redis_server.client
    r.flushall()
    settings = jobs_settings(mock.url, redis_server.url, max_concurrency=concurrency, claim_idle_ms=claim_idle_ms)
    name = "survivor" if survivor else "restart"
    config = tmp / f"{name}.toml"
    config.write_text(settings_toml(settings))
    procs = [WorkerProcess(config, tmp / f"{name}-0.log")]
    if survivor:
        procs.append(WorkerProcess(config, tmp / f"{name}-1.log"))
    try:
        for p in procs:
            p.wait_ready()
        mock.configure(latency_ms=latency_ms)
        async with serve(settings) as client:
            body = {"task": "text-generation", "include_raw": False,
                    "rows": [{"instruction": f"row {i}"} for i in range(rows)]}
            job_id = (await client.post("/jobs", json=body)).json()["id"]
            while (await client.get(f"/jobs/{job_id}")).json()["progress"]["completed"] < rows // 10:
                await asyncio.sleep(0.05)
            victim = procs[0]
            victim.kill()
            killed = time.perf_counter()
            held = held_by(r, victim.proc.pid)  # after the kill: what it held can no longer change
            if not survivor:
                procs.append(WorkerProcess(config, tmp / f"{name}-1.log"))
            stored = r.hmget(keys.units(job_id), [str(u) for units in held.values() for u in units])
            todo = {u for units in held.values() for u in units} - {
                int(u) for u, s in zip([u for units in held.values() for u in units], stored) if s is not None}
            handed = first = last = None
            while last is None:
                now = time.perf_counter() - killed
                if handed is None:
                    owners = {p["message_id"]: p["consumer"] for p in
                              r.xpending_range(keys.QUEUE, keys.GROUP, "-", "+", 10_000)}
                    # an entry no longer pending was finished (and so taken over) already
                    if any(e not in owners or owners[e].split("-")[-2] != str(victim.proc.pid) for e in held):
                        handed = now
                done = r.hmget(keys.units(job_id), [str(u) for u in sorted(todo)]) if todo else []
                n_done = sum(d is not None for d in done)
                if first is None and n_done:
                    first = now
                if n_done == len(todo):
                    last = now
                if now > 120:
                    raise RuntimeError("the dead worker's rows did not move within 120 s")
                await asyncio.sleep(0.02)
            while (await client.get(f"/jobs/{job_id}")).json()["status"] != "completed":
                await asyncio.sleep(0.1)
            results = [line for line in (await client.get(f"/jobs/{job_id}/results")).text.splitlines() if line]
            assert len(results) == rows, len(results)
    finally:
        for p in procs:
            p.close()
    return {"held_chunks": len(held), "unfinished_rows": len(todo), "handed_over_s": handed,
            "first_row_s": first, "all_rows_s": last}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=3000)
    parser.add_argument("--latency-ms", type=float, default=100)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--claim-idle-ms", type=int, default=5000)
    args = parser.parse_args()

    mock = start_mock_llm()
    with tempfile.TemporaryDirectory(prefix="jobs-recovery-") as tmp:
        redis_server = RedisServer(Path(tmp))
        try:
            for survivor in (True, False):
                res = await scenario(mock, redis_server, Path(tmp), survivor=survivor, rows=args.rows,
                                     concurrency=args.concurrency, latency_ms=args.latency_ms,
                                     claim_idle_ms=args.claim_idle_ms)
                label = "another worker running" if survivor else "worker restarted     "
                print(f"{label}: claim_idle_ms {args.claim_idle_ms}; the dead worker held {res['held_chunks']} chunks"
                      f" with {res['unfinished_rows']} unfinished rows; from kill -9: taken over"
                      f" {res['handed_over_s']:.2f} s, first of its rows stored {res['first_row_s']:.2f} s"
                      f" (goal <= 10 s),"
                      f" all {res['all_rows_s']:.2f} s", flush=True)
        finally:
            redis_server.close()
            mock.close()


if __name__ == "__main__":
    asyncio.run(main())
