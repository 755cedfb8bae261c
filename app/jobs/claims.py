"""One worker's side of the consumer group on the queue stream: reading chunks, keeping
them claimed while it works, handing them back, acknowledging them.

An entry in the group's PEL belongs to the consumer that read it last. Touching it
(XCLAIM JUSTID) resets its idle time without counting a delivery; an entry idle longer
than claim_idle_ms belongs to a dead worker, and XAUTOCLAIM hands it to a live one,
counting a delivery: the delivery count is the chunk's attempt number.
"""

from __future__ import annotations

from typing import cast

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from . import keys, scripts
from .keys import StreamReply

RELEASED_IDLE_MS = 86_400_000  # "delivered a day ago": any worker's XAUTOCLAIM takes it now

Claimed = tuple[str, dict[str, str], int]  # entry id, its fields, attempt


class Claims:
    def __init__(self, redis: Redis, consumer: str, claim_idle_ms: int):
        self.redis = redis
        self.consumer = consumer
        self.claim_idle_ms = claim_idle_ms
        self._touch = redis.register_script(scripts.TOUCH)
        self._reclaim = redis.register_script(scripts.RECLAIM)

    async def ensure_group(self) -> None:
        try:
            await self.redis.xgroup_create(keys.QUEUE, keys.GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def read(self, count: int, block_ms: int) -> list[Claimed]:
        """New chunks, waiting up to block_ms for the first."""
        answer = cast(StreamReply | None, await self.redis.xreadgroup(keys.GROUP, self.consumer, {keys.QUEUE: ">"},
                                                                      count=count, block=block_ms))
        return [(entry, fields, 1) for _, entries in answer or () for entry, fields in entries]

    async def reclaim(self, count: int) -> list[Claimed]:
        """Chunks of dead workers (idle longer than claim_idle_ms)."""
        taken = await self._reclaim(keys=[keys.QUEUE], args=[keys.GROUP, self.consumer, self.claim_idle_ms, count])
        return [(entry, dict(zip(flat[::2], flat[1::2])), int(attempt)) for entry, flat, attempt in taken]

    async def touch(self, entries: list[str]) -> list[str]:
        """Keep these chunks claimed; -> those another worker has taken over meanwhile."""
        return await self._touch(keys=[keys.QUEUE], args=[keys.GROUP, self.consumer, "", *entries]) if entries else []

    async def release(self, entries: list[str], *, after_ms: int = 0) -> None:
        """Let any worker (this one too) take these chunks over in after_ms."""
        idle = RELEASED_IDLE_MS if after_ms <= 0 else max(0, self.claim_idle_ms - after_ms)
        if entries:
            await self._touch(keys=[keys.QUEUE], args=[keys.GROUP, self.consumer, idle, *entries])

    async def ack(self, entry: str) -> None:
        """Done with this chunk without storing anything (its job ended or is gone)."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.xack(keys.QUEUE, keys.GROUP, entry)
            pipe.xdel(keys.QUEUE, entry)
            await pipe.execute()

    async def retire(self) -> None:
        """Leave the group, unless chunks are still pending in this consumer's name."""
        if not await self.redis.xpending_range(keys.QUEUE, keys.GROUP, "-", "+", 1, consumername=self.consumer):
            await self.redis.xgroup_delconsumer(keys.QUEUE, keys.GROUP, self.consumer)
