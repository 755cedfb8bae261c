"""`rpm` and `tpm` of a backend, shared by every process on one Redis: two token buckets
(requests, tokens) taken together in one Lua script, so that the check and the take are
atomic across API processes and workers. The clock is Redis's (TIME), not each machine's.

Why our own 40 lines and not a library: the Redis rate limiters on PyPI (limits,
redis-rate-limiters, pyrate-limiter) limit one counter per key and answer yes/no; a call
here takes one request AND its tokens from two buckets at once, and we want the wait until
both allow it, to sleep exactly that long instead of polling.

Each bucket holds one second of its limit (at least one call), refilled continuously: over
any minute a backend sees at most its limit plus that burst. A call costing more tokens
than a bucket holds is let through when the bucket is full and leaves it in debt, so a
large call is slowed, never refused forever. Within a process the calls waiting are sent
together, in order: one Redis call grants as many of them as the buckets allow, so the
limiter costs a Redis round trip per batch, not per call.
"""

from __future__ import annotations

import asyncio
import itertools
import math
from collections import deque
from typing import TYPE_CHECKING, Any

from .limits import LLMError

if TYPE_CHECKING:
    from .base import GenerationKwargs, Message

BURST_S = 1.0

# KEYS: the requests bucket, the tokens bucket. ARGV: rpm, tpm (0 = no limit), burst
# seconds, then the tokens of each call waiting, in order. Grants the longest prefix of
# them both buckets allow; returns {granted, seconds until the next one may go}.
_TAKE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local burst = tonumber(ARGV[3])
local buckets = {}
for i = 1, 2 do
  local limit = tonumber(ARGV[i])
  if limit > 0 then
    local rate = limit / 60
    local cap = math.max(1, rate * burst)
    local v = redis.call('HMGET', KEYS[i], 'level', 'at')
    local level = tonumber(v[1])
    if level == nil then
      level = cap
    else
      level = math.min(cap, level + (now - tonumber(v[2])) * rate)
    end
    buckets[#buckets + 1] = {key = KEYS[i], rate = rate, cap = cap, level = level, tokens = (i == 2)}
  end
end
local granted, wait = 0, 0
for c = 4, #ARGV do
  local tokens = tonumber(ARGV[c])
  for _, b in ipairs(buckets) do
    local cost = b.tokens and tokens or 1
    local need = math.min(cost, b.cap)
    if b.level < need then
      wait = math.max(wait, (need - b.level) / b.rate)
    end
  end
  if wait > 0 then
    break
  end
  for _, b in ipairs(buckets) do
    b.level = b.level - (b.tokens and tokens or 1)
  end
  granted = granted + 1
end
if granted > 0 then
  for _, b in ipairs(buckets) do
    redis.call('HSET', b.key, 'level', tostring(b.level), 'at', tostring(now))
    redis.call('PEXPIRE', b.key, math.ceil((b.cap - b.level) / b.rate * 1000) + 1000)
  end
end
return {granted, tostring(wait)}
"""


def estimate_tokens(content: str | list[Message] | list[Any], kwargs: GenerationKwargs | None = None,
                    n: int = 1) -> int:
    """A call's tokens as `tpm` counts them: the input (about 4 characters a token; no
    tokenizer is at hand for every provider) plus max_new_tokens per completion asked for."""
    if isinstance(content, str):
        chars = len(content)
    else:
        chars = sum(_chars(m) for m in content)
    output = (kwargs.max_new_tokens or 0) if kwargs is not None else 0
    return math.ceil(chars / 4) + output * n


def _chars(item: Any) -> int:
    if isinstance(item, str):
        return len(item)
    if isinstance(item, dict):
        content = item.get("content")
        if isinstance(content, str):
            return len(content)
        if isinstance(content, list):
            return sum(len(p.get("text") or "") for p in content if isinstance(p, dict))
        return 0
    if isinstance(item, list):
        return sum(_chars(m) for m in item)
    return 0


class RateLimiter:
    """The buckets of one backend on one Redis (`redis.asyncio` client). The calls waiting
    in this process are granted in order, as many per Redis call as the buckets allow."""

    MAX_BATCH = 1000

    def __init__(self, redis: Any, backend: str, *, rpm: int | None, tpm: int | None,
                 prefix: str = "synthserve:rate"):
        self.rpm = rpm or 0
        self.tpm = tpm or 0
        self.keys = [f"{prefix}:{backend}:requests", f"{prefix}:{backend}:tokens"]
        self._take = redis.register_script(_TAKE)
        self._waiting: deque[tuple[int, asyncio.Future[None]]] = deque()
        self._granting: asyncio.Task[None] | None = None
        self.waited_s = 0.0  # time the buckets made calls wait (tests, metrics)

    async def acquire(self, tokens: int = 0) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.append((tokens, future))
        if self._granting is None or self._granting.done():
            self._granting = asyncio.create_task(self._grant())
        await future  # a cancelled waiter is skipped by _grant

    async def _grant(self) -> None:
        try:
            while self._waiting:
                while self._waiting and self._waiting[0][1].done():
                    self._waiting.popleft()
                batch = [tokens for tokens, _ in itertools.islice(self._waiting, self.MAX_BATCH)]
                if not batch:
                    return
                granted, wait = await self._take(keys=self.keys, args=[self.rpm, self.tpm, BURST_S, *batch])
                for _ in range(int(granted)):
                    _, future = self._waiting.popleft()
                    if not future.done():
                        future.set_result(None)
                wait = float(wait)
                if wait > 0:
                    self.waited_s += wait
                    await asyncio.sleep(wait)
        except Exception as exc:  # noqa: BLE001 - Redis away: the waiting calls fail (their rows), none hangs
            error = LLMError(f"the shared rate limit cannot be read from Redis: {type(exc).__name__}: {exc}")
            while self._waiting:
                _, future = self._waiting.popleft()
                if not future.done():
                    future.set_exception(error)
