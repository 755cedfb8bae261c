"""Throughput of the OpenAI client alone against the mock LLM server.

    python bench/mock_throughput_clients.py [--transport aiohttp|sdk|both] [--calls 3000]
        [--concurrency 64] [--latency-ms 100] [--url http://127.0.0.1:PORT]

The physical limit is concurrency / latency calls per second (640/s at 64 in flight and
100 ms); the figure is achieved / limit. Also printed: this process's CPU time per call,
which is what eats the headroom. Starts its own mock (unless --url) on a free port.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app.config import BackendConfig  # noqa: E402
from llm_clients.base import GenerationKwargs  # noqa: E402
from llm_clients.limits import CallPolicy  # noqa: E402
from llm_clients.openai import OpenAIClient  # noqa: E402
from tests.conftest import start_mock_llm  # noqa: E402

MESSAGES = [{"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "Write a short poem about the sea, the sky and the wind."}]


async def measure(url: str, transport: str, calls: int, concurrency: int, latency_s: float) -> dict:
    config = BackendConfig(provider="openai", base_url=url + "/v1", model="mock-model", max_concurrency=concurrency)
    client = OpenAIClient("bench", config, CallPolicy(concurrency, max_retries=0, timeout_s=30), transport=transport)
    kwargs = GenerationKwargs(max_new_tokens=64, temperature=0.7)
    try:
        await asyncio.gather(*(client.chat(MESSAGES, kwargs) for _ in range(concurrency * 2)))  # warm the pool
        wall, cpu = time.perf_counter(), time.process_time()
        results = await asyncio.gather(*(client.chat(MESSAGES, kwargs) for _ in range(calls)))
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    finally:
        await client.aclose()
    assert len(results) == calls
    achieved, limit = calls / wall, concurrency / latency_s if latency_s else float("inf")
    return {"transport": transport, "calls_per_s": achieved, "limit": limit, "ratio": achieved / limit,
            "cpu_us_per_call": cpu / calls * 1e6}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--transport", choices=["aiohttp", "sdk", "both"], default="both")
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--latency-ms", type=float, default=100)
    parser.add_argument("--url", help="an already running mock (its latency is then set by this script)")
    parser.add_argument("--loop", choices=["uvloop", "asyncio"], default="uvloop",
                        help="uvicorn[standard] serves on uvloop, so that is the default")
    args = parser.parse_args()

    server = None if args.url else start_mock_llm()
    url = args.url or server.url
    try:
        import httpx
        httpx.post(url + "/_mock/config", json={"latency_ms": args.latency_ms}).raise_for_status()
        run = asyncio.run
        if args.loop == "uvloop":
            import uvloop
            run = uvloop.run
        for transport in (["aiohttp", "sdk"] if args.transport == "both" else [args.transport]):
            r = run(measure(url, transport, args.calls, args.concurrency, args.latency_ms / 1000))
            print(f"openai[{r['transport']}]: {r['calls_per_s']:.0f} calls/s of {r['limit']:.0f} possible"
                  f" -> ratio {r['ratio']:.3f}; client CPU {r['cpu_us_per_call']:.0f} us/call", flush=True)
    finally:
        if server is not None:
            server.close()


if __name__ == "__main__":
    main()
