"""A real redis-server on a free port for the cache and rate-limit tests (the jobs tests'
RedisServer; never the system one), and an asyncio client on a clean database."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
import redis.asyncio as aioredis

from tests.jobs.conftest import RedisServer


@pytest.fixture(scope="session")
def cache_redis(tmp_path_factory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("cache-redis"))
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
async def aredis(cache_redis: RedisServer) -> AsyncIterator[aioredis.Redis]:
    cache_redis.client.flushall()
    client = aioredis.Redis.from_url(cache_redis.url)
    try:
        yield client
    finally:
        await client.aclose()
