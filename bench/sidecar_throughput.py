"""Aggregate generation throughput of `synthserve sidecar` at 1, 4, 16 and 32 concurrent
/generate requests of 64 new tokens each, as tokens/s and as a ratio to 1 request, plus
the sidecar's peak RSS after each level.

    .venv/bin/python bench/sidecar_throughput.py [--model M] [--levels 1,4,16,32] [--tokens 64] [--repeat 3]
                                                 [--max-batch-size N] [--device cuda]
"""

from __future__ import annotations

import argparse
import asyncio
import time

import httpx

from _sidecar import cores, peak_rss_mib, sidecar

TOPICS = ["the sea", "a lighthouse", "mountains", "a city at night", "an old library", "the desert", "a robot",
          "a garden", "winter", "a train journey", "the moon", "a market", "volcanoes", "a violin", "bees", "rain"]


def prompt(i: int) -> str:
    # chat-templated by hand for SmolLM2 (ChatML); /generate sends inputs as they are
    return (f"<|im_start|>user\nWrite a long, detailed story about {TOPICS[i % len(TOPICS)]} "
            f"(version {i}).<|im_end|>\n<|im_start|>assistant\n")


async def round_(client: httpx.AsyncClient, n: int, tokens: int) -> tuple[int, float]:
    async def one(i: int) -> int:
        r = await client.post("/generate", json={"inputs": prompt(i), "parameters": {
            "max_new_tokens": tokens, "details": True}})
        r.raise_for_status()
        return r.json()["details"]["generated_tokens"]

    start = time.perf_counter()
    counts = await asyncio.gather(*(one(i) for i in range(n)))
    return sum(counts), time.perf_counter() - start


async def run(url: str, pid: int, levels: list[int], tokens: int, repeat: int) -> None:
    async with httpx.AsyncClient(base_url=url, timeout=600,
                                 limits=httpx.Limits(max_connections=max(levels))) as client:
        await round_(client, 2, 8)  # warm up
        base = None
        print(f"{'concurrent':>10} {'tokens':>7} {'seconds':>8} {'tokens/s':>9} {'ratio':>6} {'peak RSS':>9}")
        for n in levels:
            # the median of `repeat` rounds: the CPU is shared, single rounds are noisy
            rounds = sorted([await round_(client, n, tokens) for _ in range(repeat)], key=lambda r: r[0] / r[1])
            count, seconds = rounds[len(rounds) // 2]
            rate = count / seconds
            base = base or rate
            print(f"{n:>10} {count:>7} {seconds:>8.2f} {rate:>9.1f} {rate / base:>6.2f} {peak_rss_mib(pid):>5.0f} MiB",
                  flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model")
    parser.add_argument("--levels", default="1,4,16,32")
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=3, help="rounds per level; the median is shown")
    parser.add_argument("--max-batch-size", help="the sidecar's option (default: its own, 32)")
    parser.add_argument("--device", help="the sidecar's option: cpu, cuda... (default: cuda when present)")
    args = parser.parse_args()
    levels = [int(x) for x in args.levels.split(",")]
    options = ["--max-batch-size", args.max_batch_size] if args.max_batch_size else []
    options += ["--device", args.device] if args.device else []
    with sidecar(args.model, options=options) as (url, pid):
        device = httpx.get(f"{url}/info").json()["model_device_type"]
        print(f"sidecar pid {pid} on {device}, {cores()} cores, {args.tokens} new tokens per request")
        asyncio.run(run(url, pid, levels, args.tokens, args.repeat))
        print(f"sidecar peak RSS: {peak_rss_mib(pid):.0f} MiB (VmHWM; the column is the peak so far)")


if __name__ == "__main__":
    main()
