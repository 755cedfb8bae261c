"""Foundation throughput (issue 2).

1. 3,000 rows of text-generation in one request, mock at 100 ms, max_concurrency 64:
   rows/s over the physical limit 64 / 0.1 s = 640 rows/s (goal >= 0.85).
2. Time to the first SSE row at 100 ms latency (goal <= latency + 50 ms).
3. At 0 ms latency: rows/s of one server process (its own cost per row).

    .venv/bin/python bench/throughput.py [--rows 3000] [--concurrency 64] [--latency-ms 100]
"""

import argparse
import statistics
import time

import httpx

from common import backend_toml, mock_llm, service


def run_rows(url: str, n: int) -> float:
    rows = [{"instruction": f"Write a short fact about item {i}."} for i in range(n)]
    t0 = time.perf_counter()
    r = httpx.post(url + "/tasks/text-generation", json={"rows": rows, "include_raw": False}, timeout=600)
    elapsed = time.perf_counter() - t0
    body = r.json()
    assert r.status_code == 200 and body["failed"] == 0 and len(body["rows"]) == n, r.text[:300]
    return n / elapsed


def first_row_ms(client: httpx.Client, n: int) -> float:
    t0 = time.perf_counter()
    with client.stream("POST", "/tasks/text-generation", timeout=60,
                       json={"rows": [{"instruction": f"q {i}"} for i in range(n)], "stream": True}) as r:
        ms = None
        for line in r.iter_lines():
            if ms is None and line.startswith("event: row"):
                ms = (time.perf_counter() - t0) * 1000
    return ms


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=3000)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--latency-ms", type=float, default=100)
    args = ap.parse_args()
    limit = args.concurrency / (args.latency_ms / 1000)

    with mock_llm(args.latency_ms) as mock, service(backend_toml(mock.url, args.concurrency)) as url:
        run_rows(url, 200)  # warm up connections
        rate = run_rows(url, args.rows)
        print(f"throughput: {args.rows} rows in one request, {args.latency_ms:g} ms latency, "
              f"max_concurrency {args.concurrency}: {rate:.0f} rows/s = {rate / limit:.2f} of the limit {limit:.0f}/s")
        with httpx.Client(base_url=url) as client:
            for n in (1, args.concurrency):
                first = statistics.median(first_row_ms(client, n) for _ in range(7))
                print(f"first SSE row of {n} rows: median {first:.0f} ms "
                      f"(latency {args.latency_ms:g} ms + {first - args.latency_ms:.0f} ms)")
        mock.configure(latency_ms=0)
        run_rows(url, 500)
        rate0 = run_rows(url, args.rows)
        print(f"zero latency: {rate0:.0f} rows/s through one server process")


if __name__ == "__main__":
    main()
