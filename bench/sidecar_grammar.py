"""The cost of constrained decoding in `synthserve sidecar`: aggregate tokens/s of N
concurrent /generate requests (64 new tokens each) with a JSON-schema grammar on every row,
over the same without one. The target is >= 0.8.

The schema asks for more than the token budget holds (eight paragraphs), so constrained
rows run to `max_new_tokens` as free ones do and both sides generate the same token count;
the ratio is then the per-step cost of the masks (and of the text the grammar forces).
Rounds alternate between the two sides and the median of each is shown: the CPU is shared.

    .venv/bin/python bench/sidecar_grammar.py [--model M] [--concurrency 16] [--tokens 64] [--repeat 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time

import httpx

from _sidecar import cores, sidecar
from sidecar_throughput import prompt

SCHEMA = {
    "type": "object",
    "properties": {
        "title": {"type": "string", "maxLength": 60},
        "mood": {"enum": ["calm", "tense", "joyful", "sad"]},
        "year": {"type": "integer", "minimum": 1900, "maximum": 2100},
        "place": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        "paragraphs": {"type": "array", "items": {"type": "string"}, "minItems": 8},
    },
    "required": ["title", "mood", "year", "place", "paragraphs"],
}


async def round_(client: httpx.AsyncClient, n: int, tokens: int, grammar: bool) -> tuple[int, float, list[str]]:
    async def one(i: int) -> tuple[int, str]:
        parameters = {"max_new_tokens": tokens, "details": True, "do_sample": True, "seed": i}
        if grammar:
            parameters["grammar"] = {"type": "json", "value": SCHEMA}
        r = await client.post("/generate", json={"inputs": prompt(i), "parameters": parameters})
        r.raise_for_status()
        body = r.json()
        return body["details"]["generated_tokens"], body["generated_text"]

    start = time.perf_counter()
    results = await asyncio.gather(*(one(i) for i in range(n)))
    return sum(c for c, _ in results), time.perf_counter() - start, [t for _, t in results]


async def run(url: str, n: int, tokens: int, repeat: int) -> None:
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=httpx.Limits(max_connections=n)) as client:
        await round_(client, 2, 8, grammar=True)  # warm up: the grammar tokenizer and the schema compile
        await round_(client, 2, 8, grammar=False)
        rates: dict[bool, list[float]] = {False: [], True: []}
        counts: dict[bool, int] = {}
        for _ in range(repeat):
            for grammar in (False, True):
                count, seconds, texts = await round_(client, n, tokens, grammar)
                rates[grammar].append(count / seconds)
                counts[grammar] = count
                if grammar:  # the constrained text is the schema's start: '{"title":"...'
                    assert all(t.startswith('{"title":') for t in texts), texts[0][:80]
        free, constrained = statistics.median(rates[False]), statistics.median(rates[True])
        print(f"{'grammar':>8} {'tokens':>7} {'tokens/s':>9}  (median of {repeat}; all: "
              f"{json.dumps({'free': [round(r, 1) for r in rates[False]], 'json': [round(r, 1) for r in rates[True]]})})")
        print(f"{'none':>8} {counts[False]:>7} {free:>9.1f}")
        print(f"{'json':>8} {counts[True]:>7} {constrained:>9.1f}")
        print(f"ratio json/none: {constrained / free:.2f} (target >= 0.8)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=3, help="rounds per side; the median is shown")
    args = parser.parse_args()
    with sidecar(args.model) as (url, pid):
        print(f"sidecar pid {pid}, {cores()} cores, {args.concurrency} concurrent requests of "
              f"{args.tokens} new tokens")
        asyncio.run(run(url, args.concurrency, args.tokens, args.repeat))


if __name__ == "__main__":
    main()
