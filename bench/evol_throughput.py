"""evol-instruct throughput: 1,000 rows with num_evolutions 3 in one request, against the
mock LLM at 100 ms per call, backend max_concurrency 64.

Each row makes 3 calls in sequence, so the physical limit is 64 / (3 x 0.1 s) ~ 213 rows/s;
the figure is rows/s and its ratio to that limit (goal >= 0.85). The mock and the service
run as their own processes (bench/common.py).

    .venv/bin/python bench/evol_throughput.py [--rows 1000] [--evolutions 3] [--concurrency 64]
                                             [--latency-ms 100] [--repeat 3]
"""

from __future__ import annotations

import argparse
import statistics
import time

import httpx

from common import backend_toml, mock_llm, service

# every mutation answer carries the marker, so each row really makes all its rounds
REPLY = "#Rewritten Prompt#:\nExplain, in three numbered steps, how tides form, citing the Moon's role."


def run_rows(url: str, n: int, evolutions: int) -> float:
    rows = [{"instruction": f"Explain how tides form (variant {i})."} for i in range(n)]
    t0 = time.perf_counter()
    r = httpx.post(url + "/tasks/evol-instruct", timeout=900, json={
        "rows": rows, "params": {"num_evolutions": evolutions}, "include_raw": False})
    elapsed = time.perf_counter() - t0
    body = r.json()
    assert r.status_code == 200 and body["failed"] == 0 and len(body["rows"]) == n, r.text[:300]
    assert all(row["metadata"]["llm_calls"] == evolutions for row in body["rows"])
    return n / elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1000)
    ap.add_argument("--evolutions", type=int, default=3)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--latency-ms", type=float, default=100)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    limit = args.concurrency / (args.evolutions * args.latency_ms / 1000)

    with mock_llm(args.latency_ms) as mock, service(backend_toml(mock.url, args.concurrency)) as url:
        mock.script([{"reply": REPLY}])
        run_rows(url, args.concurrency, args.evolutions)  # warm up connections
        before = mock.stats()["requests"]
        rates = []
        for _ in range(args.repeat):
            rates.append(run_rows(url, args.rows, args.evolutions))
            print(f"  run: {rates[-1]:.1f} rows/s", flush=True)
        stats = mock.stats()
        calls = stats["requests"] - before
        assert calls == args.repeat * args.rows * args.evolutions, calls
    best, median = max(rates), statistics.median(rates)
    print(f"evol-instruct, {args.rows} rows x {args.evolutions} evolutions, mock {args.latency_ms:g} ms, "
          f"max_concurrency {args.concurrency} (mock saw at most {stats['max_in_flight']} in flight)")
    print(f"limit {limit:.1f} rows/s; median {median:.1f} rows/s = {median / limit:.2f} of the limit; "
          f"best {best:.1f} rows/s = {best / limit:.2f}")


if __name__ == "__main__":
    main()
