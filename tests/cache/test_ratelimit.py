"""rpm / tpm buckets shared through Redis: two limiters on one Redis stand for two processes."""

from __future__ import annotations

import asyncio

from llm_clients.base import GenerationKwargs
from llm_clients.ratelimit import RateLimiter, estimate_tokens


async def test_two_processes_share_one_request_bucket(aredis):
    api, worker = (RateLimiter(aredis, "b", rpm=60, tpm=None) for _ in range(2))  # 1 call/s, burst 1
    await api.acquire()
    assert api.waited_s == 0
    await worker.acquire()  # the bucket the API emptied: this one waits for it to refill
    assert worker.waited_s > 0


async def test_backends_have_their_own_buckets(aredis):
    a, b = RateLimiter(aredis, "a", rpm=60, tpm=None), RateLimiter(aredis, "b", rpm=60, tpm=None)
    await a.acquire()
    await b.acquire()
    assert a.waited_s == b.waited_s == 0


async def test_tokens_bucket_lets_a_large_call_through_in_debt(aredis):
    limiter = RateLimiter(aredis, "t", rpm=None, tpm=600)  # 10 tokens/s, bucket of 10
    await limiter.acquire(25)  # more than the bucket holds: through when full, 15 in debt
    assert limiter.waited_s == 0
    await limiter.acquire(1)  # waits out the debt: (15 + 1) / 10 s
    assert limiter.waited_s > 1.0


async def test_waiters_in_one_process_are_served_in_turn(aredis):
    limiter = RateLimiter(aredis, "q", rpm=600, tpm=None)  # 10/s, bucket of 10
    await asyncio.gather(*(limiter.acquire() for _ in range(13)))
    levels = await aredis.hget("synthserve:rate:q:requests", "level")
    assert float(levels) < 1  # 13 taken: the burst of 10 and 3 refills, no call let through twice


def test_estimate_tokens():
    kwargs = GenerationKwargs(max_new_tokens=100)
    assert estimate_tokens("x" * 40, kwargs) == 110
    assert estimate_tokens([{"role": "user", "content": "x" * 8}], kwargs, n=2) == 202
    parts = [{"role": "user", "content": [{"type": "text", "text": "x" * 4}]}]
    assert estimate_tokens(parts) == 1
    assert estimate_tokens([[{"role": "user", "content": "abcd"}], "efgh"]) == 2
