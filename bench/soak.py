"""Soak (issue 13): good clients never see an error while hostile requests run.

Against the mock LLM, for a bounded time, one `synthserve serve` (API keys on, CORS on,
its private Redis) takes at once:
  - 500 SSE clients, each posting 2-row text-generation streams back to back and checking
    every event (strict JSON: no NaN/Infinity, valid UTF-8; no `error` event; 2 rows, no
    row error; a `done`);
  - 200 watchers on one job's `/jobs/{id}/events` (a job long enough to outlast the run),
    checking every event likewise;
  - a stream of bad requests: each payload of the issue (templates that compute, loop,
    double or recurse; NaN, Infinity, lone surrogates; a non-ASCII key; /metrics without a
    key; 3,000 rows x 64 generations; a 2 MB string; a 10 MB string; a 50 MB body; a CORS
    preflight; an unreachable backend whose row errors must name no host or port; a JSON
    client that leaves), each expected to get its 4xx (or its clean row error), never a 5xx.

It prints the errors good clients saw (must be 0), the bad requests answered otherwise
than expected, /health p99 idle, under the bad requests alone and under the whole load (as
ratios to the idle p99), and the server's RSS before, at its peak, and after.

    .venv/bin/python bench/soak.py [--seconds 20] [--sse-clients 500] [--watchers 200]

The client runs in this one process next to the server on the same cores: on a busy
machine the latencies measure the machine as much as the server.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

from common import ROOT, free_port, mock_llm, wait_http

KEY = "soak-key-3d7f"
ORIGIN = "https://soak.example"
AUTH = {"Authorization": f"Bearer {KEY}"}
COL = "x" * 600


def config(mock_url: str, down_port: int) -> str:
    return f"""
[server]
api_keys_env = "SOAK_API_KEYS"
cors_origins = ["{ORIGIN}"]

[backends.mock]
provider = "openai"
base_url = "{mock_url}/v1"
model = "mock-model"
max_concurrency = 256
max_retries = 0

[backends.jobs]
provider = "openai"
base_url = "{mock_url}/v1"
model = "mock-model"
max_concurrency = 4
max_retries = 0

[backends.down]
provider = "openai"
base_url = "http://127.0.0.1:{down_port}/v1"
model = "nowhere"
max_retries = 0
timeout_s = 5
"""


@contextlib.contextmanager
def server(toml: str):
    """`synthserve serve` as its own process (its RSS is the figure); yields (url, pid, log path)."""
    work = Path(tempfile.mkdtemp(prefix="soak-"))
    (work / "soak.toml").write_text(toml)
    port = free_port()
    log = open(work / "serve.log", "w")
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "SOAK_API_KEYS": KEY, "SYNTHSERVE_DATA_DIR": str(work / "data")}
    proc = subprocess.Popen([sys.executable, "-m", "app.cli", "serve", "--config", str(work / "soak.toml"),
                             "--port", str(port), "--log-level", "warning"], cwd=ROOT, env=env,
                            stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(url + "/health", proc)
        yield url, proc.pid, work / "serve.log"
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def strict_json(data: bytes):
    def refuse(constant: str):
        raise ValueError(f"{constant} is not JSON")
    return json.loads(data.decode("utf-8"), parse_constant=refuse)  # strict UTF-8 too


def events_of(raw: bytes) -> list[tuple[str, object]]:
    out = []
    for block in raw.split(b"\n\n"):
        name, data = "message", None
        for line in block.split(b"\n"):
            if line.startswith(b"event:"):
                name = line[6:].strip().decode()
            elif line.startswith(b"data:"):
                data = strict_json(line[5:].strip())
        if data is not None:
            out.append((name, data))
    return out


class Tally:
    def __init__(self) -> None:
        self.ok = collections.Counter()
        self.errors = collections.Counter()

    def error(self, what: str) -> None:
        self.errors[what] += 1


# ---- good clients ----

async def sse_client(http: aiohttp.ClientSession, url: str, stop: asyncio.Event, tally: Tally, n: int) -> None:
    body = {"rows": [{"instruction": f"soak {n} a"}, {"instruction": f"soak {n} b"}], "stream": True}
    while not stop.is_set():
        try:
            async with http.post(url + "/tasks/text-generation", json=body, headers=AUTH) as r:
                raw = await r.read()
            if r.status != 200:
                tally.error(f"sse: HTTP {r.status}")
                continue
            events = events_of(raw)
            names = [name for name, _ in events]
            rows = [data["row"] for name, data in events if name == "row"]
            if "error" in names or names[-1:] != ["done"] or len(rows) != 2 or any(r["error"] for r in rows):
                tally.error(f"sse: events {names}")
            else:
                tally.ok["sse streams"] += 1
        except (aiohttp.ClientError, ValueError, KeyError) as exc:
            tally.error(f"sse: {type(exc).__name__}")


async def watcher(http: aiohttp.ClientSession, url: str, job_id: str, stop: asyncio.Event, tally: Tally) -> None:
    try:
        async with http.get(f"{url}/jobs/{job_id}/events", headers=AUTH,
                            timeout=aiohttp.ClientTimeout(total=None, sock_read=None)) as r:
            if r.status != 200:
                tally.error(f"watcher: HTTP {r.status}")
                return
            pending = b""
            while not stop.is_set():
                chunk = await r.content.readany()
                if not chunk:
                    break
                *blocks, pending = (pending + chunk).split(b"\n\n")
                for name, _ in events_of(b"\n\n".join(blocks)):
                    if name == "error":
                        tally.error("watcher: error event")
                    tally.ok["job events"] += 1
                    if name == "done":
                        tally.ok["watchers done"] += 1
                        return
            tally.ok["watchers open at the end"] += 1
    except (aiohttp.ClientError, ValueError) as exc:
        tally.error(f"watcher: {type(exc).__name__}")


PROBE = """
import http.client, sys, time
host, port = sys.argv[1], int(sys.argv[2])
conn = http.client.HTTPConnection(host, port, timeout=30)
while True:
    t0 = time.time()
    conn.request("GET", "/health")
    conn.getresponse().read()
    print(t0, (time.time() - t0) * 1000, flush=True)
    time.sleep(0.02)
"""


class HealthProbe:
    """GET /health every 20 ms from a process of its own: probes in this process would
    also time this process's own stalls (encoding a 50 MB body, 700 streams' parsing)."""

    def __init__(self, url: str):
        host, port = url.removeprefix("http://").split(":")
        self.proc = subprocess.Popen([sys.executable, "-c", PROBE, host, port], stdout=subprocess.PIPE, text=True)

    def close(self) -> list[tuple[float, float]]:
        self.proc.terminate()
        out, _ = self.proc.communicate(timeout=10)
        return [tuple(map(float, line.split())) for line in out.splitlines() if line.strip()]


# ---- bad clients ----

def tpl(template: str, rows: int = 1) -> dict:
    return {"json": {"rows": [{"instruction": COL}] * rows, "params": {"template": template}}}


def raw(body: bytes) -> dict:
    return {"data": body, "headers": {**AUTH, "Content-Type": "application/json"}}


BAD = [
    ("template 9**(9**8)", "POST", "/tasks/text-generation", tpl("{{ instruction }}{% set z = 9**(9**8) %}"), 422),
    ("template nested loops", "POST", "/tasks/text-generation",
     tpl("{% for a in instruction %}{% for b in instruction %}{% for c in instruction %}{% endfor %}"
         "{% endfor %}{% endfor %}{{ instruction }}"), 422),
    ("template doubling", "POST", "/tasks/text-generation",
     tpl("{% set ns = namespace(s=instruction) %}{% for i in range(29) %}{% set ns.s = ns.s ~ ns.s %}"
         "{% endfor %}{{ ns.s|length }}"), 422),
    ("template range(10**9)", "POST", "/tasks/text-generation",
     tpl("{{ instruction }}{% for i in range(10**9) %}{% endfor %}"), 422),
    ("template recursive macro", "POST", "/tasks/text-generation",
     tpl("{% macro f(x) %}{{ f(x) }}{% endmacro %}{{ f(instruction) }}"), 422),
    ("template recursive loop", "POST", "/tasks/text-generation",
     tpl("{% for x in [instruction] recursive %}{{ loop([x]) }}{% endfor %}"), 422),
    ("template format_map", "POST", "/tasks/text-generation", tpl("{{ instruction.format_map() }}"), 422),
    ("template slow (time limit)", "POST", "/tasks/text-generation",
     tpl("{% for i in range(90000) %}{{ instruction|wordwrap(7)|length }}{% endfor %}", rows=20), 422),
    ("NaN in a column", "POST", "/tasks/text-generation", raw(b'{"rows": [{"instruction": "a", "s": NaN}]}'), 422),
    ("Infinity in a column", "POST", "/tasks/text-generation",
     raw(b'{"rows": [{"instruction": "a", "s": Infinity}]}'), 422),
    ("temperature NaN", "POST", "/tasks/text-generation",
     raw(b'{"rows": [{"instruction": "a"}], "llm": {"generation_kwargs": {"temperature": NaN}}}'), 422),
    ("lone surrogate", "POST", "/tasks/text-generation", raw(b'{"rows": [{"instruction": "a \\ud800"}]}'), 422),
    ("Bearer \u00e9", "GET", "/tasks", {"headers": {"Authorization": "Bearer \u00e9".encode("latin-1").decode("latin-1")}}, 401),
    ("/metrics without a key", "GET", "/metrics", {"headers": {}}, 401),
    ("3,000 rows x 64 generations", "POST", "/tasks/text-generation",
     {"json": {"rows": [{"instruction": "r"}] * 3000, "params": {"num_generations": 64}}}, 413),
    ("a 2 MB string", "POST", "/tasks/text-generation", {"json": {"rows": [{"instruction": "x" * 2_000_000}]}}, 413),
    # encoded once: json.dumps of 50 MB here would stall this process's own loop (and its probes)
    ("a 10 MB string", "POST", "/tasks/text-generation",
     raw(json.dumps({"rows": [{"instruction": "x" * 10_000_000}]}).encode()), 413),
    ("a 50 MB body", "POST", "/tasks/text-generation",
     raw(json.dumps({"rows": [{"instruction": "x" * 10_000_000} for _ in range(5)]}).encode()), 413),
    ("CORS preflight", "OPTIONS", "/tasks/text-generation",
     {"headers": {"Origin": ORIGIN, "Access-Control-Request-Method": "POST"}}, 200),
]


async def bad_client(http: aiohttp.ClientSession, url: str, stop: asyncio.Event, tally: Tally, start: int) -> None:
    i = start
    while not stop.is_set():
        name, method, path, kwargs, expected = BAD[i % len(BAD)]
        i += 1
        kwargs = kwargs if "headers" in kwargs or "data" in kwargs else {**kwargs, "headers": AUTH}
        try:
            async with http.request(method, url + path, **kwargs) as r:
                body = await r.read()
            if r.content_type == "application/json":
                strict_json(body)
            if r.status != expected:
                tally.error(f"{name}: HTTP {r.status}, not {expected}")
            else:
                tally.ok["bad requests answered as expected"] += 1
        except (aiohttp.ClientError, ValueError) as exc:
            tally.error(f"{name}: {type(exc).__name__}")
        await unreachable_backend(http, url, tally) if i % len(BAD) == 0 else None
        await leaving_client(http, url, tally) if i % len(BAD) == 1 else None


async def unreachable_backend(http: aiohttp.ClientSession, url: str, tally: Tally) -> None:
    body = {"rows": [{"instruction": "hello"}], "llm": {"backend": "down"}}
    async with http.post(url + "/tasks/text-generation", json=body, headers=AUTH) as r:
        text = await r.text()
    error = json.loads(text)["rows"][0]["error"] if r.status == 200 else None
    if error is None or error.get("code") != "unreachable" or "127.0.0.1" in text:
        tally.error(f"unreachable backend: HTTP {r.status} {text[:200]}")
    else:
        tally.ok["bad requests answered as expected"] += 1


async def leaving_client(http: aiohttp.ClientSession, url: str, tally: Tally) -> None:
    body = {"rows": [{"instruction": f"leaving {i}"} for i in range(50)], "llm": {"backend": "jobs"}}
    with contextlib.suppress(asyncio.TimeoutError):
        async with asyncio.timeout(0.3):  # leaves before its rows are done: its calls are cancelled
            async with http.post(url + "/tasks/text-generation", json=body, headers=AUTH) as r:
                await r.read()
    tally.ok["clients that left"] += 1


def p99(samples: list[float]) -> float:
    return statistics.quantiles(samples, n=100)[98] if len(samples) >= 2 else float("nan")


async def phase(seconds: float, tasks_of) -> tuple[float, float]:
    """Run the tasks for `seconds`; the (start, end) wall-clock window, to pick its probes."""
    stop = asyncio.Event()
    start = time.time()
    tasks = tasks_of(stop)
    await asyncio.sleep(seconds)
    end = time.time()
    stop.set()
    if tasks:
        await asyncio.wait(tasks, timeout=30)
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return start, end


async def soak(url: str, pid: int, args) -> dict:
    connector = aiohttp.TCPConnector(limit=0, force_close=False)
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:
        rss_before = rss_mb(pid)
        probe = HealthProbe(url)
        idle = await phase(3, lambda stop: [])
        bad_only, hostile_tally = Tally(), Tally()
        hostile = await phase(args.seconds / 3,
                              lambda stop: [asyncio.create_task(bad_client(http, url, stop, bad_only, k))
                                            for k in range(2)])

        rows = [{"instruction": f"job row {i}"} for i in range(int(80 * args.seconds * 1.5))]
        async with http.post(url + "/jobs", json={"task": "text-generation", "rows": rows,
                                                  "llm": {"backend": "jobs"}}, headers=AUTH) as r:
            job = await r.json()
        good = Tally()
        peak = [rss_before]

        def load(stop):
            async def sample_rss():
                while not stop.is_set():
                    peak.append(rss_mb(pid))
                    await asyncio.sleep(0.5)
            return ([asyncio.create_task(sse_client(http, url, stop, good, n)) for n in range(args.sse_clients)]
                    + [asyncio.create_task(watcher(http, url, job["id"], stop, good)) for _ in range(args.watchers)]
                    + [asyncio.create_task(bad_client(http, url, stop, hostile_tally, k)) for k in range(2)]
                    + [asyncio.create_task(sample_rss())])

        loaded = await phase(args.seconds, load)
        probes = probe.close()
        async with http.post(f"{url}/jobs/{job['id']}/cancel", headers=AUTH) as r:
            await r.read()
        await asyncio.sleep(3)

        def within(window: tuple[float, float]) -> list[float]:
            return [ms for t, ms in probes if window[0] <= t < window[1]]

        return {"good": good, "bad_only": bad_only, "hostile": hostile_tally, "idle": within(idle),
                "hostile_p": within(hostile), "loaded": within(loaded), "rss": (rss_before, max(peak), rss_mb(pid))}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--sse-clients", type=int, default=500)
    ap.add_argument("--watchers", type=int, default=200)
    ap.add_argument("--latency-ms", type=float, default=50)
    args = ap.parse_args()
    with mock_llm(args.latency_ms) as mock, server(config(mock.url, free_port())) as (url, pid, log):
        out = asyncio.run(soak(url, pid, args))
        logs = log.read_text()
    good, idle_p99 = out["good"], p99(out["idle"])
    print(f"soak: {args.sse_clients} SSE clients + {args.watchers} job watchers + 2 bad-request loops, "
          f"{args.seconds:g} s, mock at {args.latency_ms:g} ms; load average {os.getloadavg()[0]:.1f} "
          f"on {os.cpu_count()} cores")
    print(f"good clients: {dict(good.ok)}; errors seen: {sum(good.errors.values())} {dict(good.errors)}")
    for label, tally in (("bad requests alone", out["bad_only"]), ("bad requests under load", out["hostile"])):
        print(f"{label}: {dict(tally.ok)}; answered otherwise: {sum(tally.errors.values())} {dict(tally.errors)}")
    for label, samples in (("idle", out["idle"]), ("bad requests alone", out["hostile_p"]),
                           ("whole load", out["loaded"])):
        print(f"/health p99 {label}: {p99(samples):.1f} ms = {p99(samples) / idle_p99:.1f} x idle "
              f"(median {statistics.median(samples):.1f} ms, {len(samples)} probes)")
    before, peak, after = out["rss"]
    print(f"server RSS: before {before:.0f} MB, peak {peak:.0f} MB, after {after:.0f} MB ({after / before:.2f} x before)")
    print(f"server log: {logs.count('Traceback')} tracebacks, "
          f"{logs.count('never retrieved')} 'Task exception was never retrieved'")


if __name__ == "__main__":
    main()
