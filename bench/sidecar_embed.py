"""Embedding throughput of `synthserve sidecar`: 256 short texts in one batched /embed
call against one call per text in turn, as texts/s; then one text per call with 64 calls
in flight (the engine batches concurrent calls); and the sidecar's peak RSS. First, for
scale on a shared machine, the naive computation in process: plain Transformers (none of
sidecar.cpu's kernels), the LM head and every layer's hidden states.

    .venv/bin/python bench/sidecar_embed.py [--model M] [--texts 256] [--no-naive]
"""

from __future__ import annotations

import argparse
import asyncio
import time

import httpx

from _sidecar import cores, peak_rss_mib, sidecar

SUBJECTS = ["The cat", "A storm", "My neighbour", "The committee", "An old map", "The river", "A new phone",
            "The bakery", "Our team", "The museum", "A violin", "The garden"]
VERBS = ["sleeps near", "moves toward", "talks about", "waits for", "points to", "changes"]
OBJECTS = ["the window", "the harbour", "a quiet town", "the budget", "the mountains", "an empty room",
           "the final exam", "the evening news"]


def texts(n: int) -> list[str]:
    return [f"{SUBJECTS[i % 12]} {VERBS[i // 12 % 6]} {OBJECTS[i // 72 % 8]}." for i in range(n)]


async def one_text_per_call(url: str, items: list[str]) -> float:
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=httpx.Limits(max_connections=64)) as client:
        slots = asyncio.Semaphore(64)  # a backend's max_concurrency

        async def one(text: str) -> None:
            async with slots:
                (await client.post("/embed", json={"inputs": [text]})).raise_for_status()

        start = time.perf_counter()
        await asyncio.gather(*(one(t) for t in items))
        return time.perf_counter() - start


def naive_texts_per_s(model: str | None, items: list[str], batch: int = 32) -> float:
    """The first approach, in this process, for comparison on the same machine and load:
    the plain Transformers causal LM with its head and every layer's hidden states, fixed
    batches of 32."""
    import torch

    from sidecar.loading import load

    torch.set_num_threads(cores())
    loaded = load(model, "cpu", optimize=False)
    tok, lm = loaded.tokenizer, loaded.model
    texts = [tok.apply_chat_template([{"role": "user", "content": t}], tokenize=False, add_generation_prompt=True)
             for t in items]
    tok.padding_side = "right"
    start = time.perf_counter()
    with torch.inference_mode():
        for i in range(0, len(texts), batch):
            enc = tok(texts[i:i + batch], return_tensors="pt", padding=True, add_special_tokens=False)
            hidden = lm(**enc, output_hidden_states=True).hidden_states[-1]
            hidden[torch.arange(hidden.shape[0]), enc["attention_mask"].sum(1) - 1].tolist()
    return len(texts) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model")
    parser.add_argument("--texts", type=int, default=256)
    parser.add_argument("--no-naive", action="store_true", help="skip the in-process baseline")
    args = parser.parse_args()
    items = texts(args.texts)
    if not args.no_naive:  # before the sidecar starts, so that the two do not share the CPU
        print(f"baseline (plain Transformers, LM head + all hidden states, batches of 32, in process): "
              f"{naive_texts_per_s(args.model, items):.1f} texts/s")
    with sidecar(args.model) as (url, pid), httpx.Client(base_url=url, timeout=600) as client:
        print(f"sidecar pid {pid}, {cores()} cores, {len(items)} texts")
        client.post("/embed", json={"inputs": items[:8]}).raise_for_status()  # warm up

        start = time.perf_counter()
        batched = client.post("/embed", json={"inputs": items})
        batched.raise_for_status()
        batched_s = time.perf_counter() - start
        vectors = batched.json()
        assert len(vectors) == len(items) and all(len(v) == len(vectors[0]) for v in vectors)

        start = time.perf_counter()
        for text in items:
            client.post("/embed", json={"inputs": [text]}).raise_for_status()
        single_s = time.perf_counter() - start

        concurrent_s = asyncio.run(one_text_per_call(url, items))

        print(f"batched:        {len(items) / batched_s:7.1f} texts/s ({batched_s:.2f} s, dim {len(vectors[0])})")
        print(f"one at a time:  {len(items) / single_s:7.1f} texts/s ({single_s:.2f} s)")
        print(f"speed-up:       {single_s / batched_s:7.2f}x")
        print(f"one text per call, all at once (as generate-embeddings sends them): "
              f"{len(items) / concurrent_s:.1f} texts/s")
        print(f"sidecar peak RSS: {peak_rss_mib(pid):.0f} MiB")


if __name__ == "__main__":
    main()
