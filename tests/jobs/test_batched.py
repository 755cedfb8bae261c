"""app.jobs.batched.BatchedScript against a real redis-server: calls of one loop turn in
one pipeline, each caller with its own answer, and a script Redis lost loaded again."""

from __future__ import annotations

import asyncio

import redis.asyncio as aredis

from app.jobs.batched import BatchedScript

# KEYS[1]: a list. ARGV[1]: a value, pushed -> the list's length after
PUSH = "return redis.call('RPUSH', KEYS[1], ARGV[1])"


async def test_one_turns_calls_run_in_order_each_with_its_answer(rds, redis_server):
    client = aredis.Redis.from_url(redis_server.url)
    try:
        push = BatchedScript(client, PUSH)
        answers = await asyncio.gather(*(push(keys=["l"], args=[f"v{i}"]) for i in range(50)))
        assert answers == list(range(1, 51))
        assert rds.lrange("l", 0, -1) == [f"v{i}" for i in range(50)]
        rds.script_flush()  # as after a Redis restart: the calls answer NOSCRIPT once, and run once
        assert await asyncio.gather(push(keys=["l"], args=["a"]), push(keys=["l"], args=["b"])) == [51, 52]
        assert rds.llen("l") == 52
    finally:
        await client.aclose()


async def test_a_failing_call_fails_only_its_caller(rds, redis_server):
    client = aredis.Redis.from_url(redis_server.url)
    try:
        push = BatchedScript(client, PUSH)
        rds.set("s", "a string")
        ok, bad = await asyncio.gather(push(keys=["l"], args=["x"]), push(keys=["s"], args=["y"]),
                                       return_exceptions=True)
        assert ok == 1 and "WRONGTYPE" in str(bad)
    finally:
        await client.aclose()
