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
large call is slowed, never refused forever. Within a process, waiters queue on a lock and
only the head asks Redis, so a thousand waiting calls cost one Redis call per grant.
"""

from __future__ import annotations

import asyncio
import math
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .base import GenerationKwargs, Message

BURST_S = 1.0

# KEYS: the requests bucket, the tokens bucket. ARGV: rpm, tpm (0 = no limit), the call's
# tokens, burst seconds. Returns "0" and takes both, or the seconds to wait and takes nothing.
_TAKE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local burst = tonumber(ARGV[4])
local buckets = {}
local wait = 0
for i = 1, 2 do
  local limit = tonumber(ARGV[i])
  if limit > 0 then
    local rate = limit / 60
    local cap = math.max(1, rate * burst)
    local cost = (i == 1) and 1 or tonumber(ARGV[3])
    local v = redis.call('HMGET', KEYS[i], 'level', 'at')
    local level = tonumber(v[1])
    if level == nil then
      level = cap
    else
      level = math.min(cap, level + (now - tonumber(v[2])) * rate)
    end
    local need = math.min(cost, cap)
    if level < need then
      wait = math.max(wait, (need - level) / rate)
    end
    buckets[#buckets + 1] = {KEYS[i], level - cost, (cap - (level - cost)) / rate}
  end
end
if wait > 0 then
  return tostring(wait)
end
for _, b in ipairs(buckets) do
  redis.call('HSET', b[1], 'level', tostring(b[2]), 'at', tostring(now))
  redis.call('PEXPIRE', b[1], math.ceil(b[3] * 1000) + 1000)
end
return '0'
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
    """The buckets of one backend on one Redis (`redis.asyncio` client)."""

    def __init__(self, redis: Any, backend: str, *, rpm: int | None, tpm: int | None,
                 prefix: str = "synthserve:rate"):
        self.rpm = rpm or 0
        self.tpm = tpm or 0
        self.keys = [f"{prefix}:{backend}:requests", f"{prefix}:{backend}:tokens"]
        self._take = redis.register_script(_TAKE)
        self._head = asyncio.Lock()
        self.waited_s = 0.0  # time calls spent waiting for the buckets (metrics, tests)

    async def acquire(self, tokens: int = 0) -> None:
        async with self._head:
            while True:
                wait = float(await self._take(keys=self.keys, args=[self.rpm, self.tpm, tokens, BURST_S]))
                if wait <= 0:
                    return
                self.waited_s += wait
                await asyncio.sleep(wait)
