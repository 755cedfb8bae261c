"""Dedup steps: an index in Redis per (run, step), so that every worker of a job dedups
against the same one. A row is reduced to a few hash fields; one script claims them all
for the row or finds one claimed by another row, atomically:

    exact     one field, the hash of the column's value (JSON, keys sorted)
    minhash   one field per LSH band of the value's MinHash (datasketch, 128 permutations,
              word tokens), bands and rows per band chosen by datasketch's MinHashLSH for
              the threshold: a row sharing any band with a row kept before is a
              near-duplicate (as distilabel's MinHashDedup, which also keeps the first)

A field holds the id of the row that claimed it, so running a row through the step again
(a job resumed after a crash) keeps it if it was kept: the claim is its own.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
from functools import lru_cache
from typing import Any

import numpy as np
from datasketch import MinHash, MinHashLSH

from ..jobs import keys
from .definition import DedupSpec

NUM_PERM = 128
MINHASH_SEED = 1
_WORDS = re.compile(r"\w+")

# KEYS[1] the index; ARGV: row id, ttl s, field... -> 1 kept (claimed, or claimed before by
# this row), 0 a duplicate
CLAIM = """
local found = redis.call('HMGET', KEYS[1], unpack(ARGV, 3))
for _, owner in ipairs(found) do
  if owner and owner ~= ARGV[1] then return 0 end
end
for i = 3, #ARGV do redis.call('HSETNX', KEYS[1], ARGV[i], ARGV[1]) end
redis.call('EXPIRE', KEYS[1], ARGV[2])
return 1
"""


@lru_cache(maxsize=64)
def bands(threshold: float) -> tuple[int, int]:
    """(bands, rows per band) for `threshold`: MinHashLSH's optimum (an integral, computed once)."""
    lsh = MinHashLSH(threshold=threshold, num_perm=NUM_PERM)
    return lsh.b, lsh.r


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, sort_keys=True)


def fields(spec: DedupSpec, value: Any) -> list[str]:
    """The index fields of a value (CPU: call it off the event loop for minhash)."""
    if spec.method == "exact":
        digest = hashlib.blake2b(_text(value).encode(), digest_size=16).hexdigest()
        return [f"x:{digest}"]
    tokens = {t.encode() for t in _WORDS.findall(_text(value).lower())} or {b""}
    m = MinHash(num_perm=NUM_PERM, seed=MINHASH_SEED)
    m.update_batch(list(tokens))
    b, r = bands(spec.threshold)
    values = np.asarray(m.hashvalues, dtype=np.uint64)
    return [f"{i}:{hashlib.blake2b(values[i * r:(i + 1) * r].tobytes(), digest_size=8).hexdigest()}"
            for i in range(b)]


class DedupIndex:
    """The dedup indexes of one run (`scope`: a job id, or a request's own token)."""

    def __init__(self, redis: Any, scope: str, ttl_s: int):
        self.redis = redis
        self.scope = scope
        self.ttl_s = ttl_s
        self._claim = redis.register_script(CLAIM)
        self._steps: set[str] = set()

    async def keep(self, step: str, spec: DedupSpec, row_id: str, value: Any) -> bool:
        found = await asyncio.to_thread(fields, spec, value) if spec.method == "minhash" else fields(spec, value)
        self._steps.add(step)
        return bool(await self._claim(keys=[keys.dedup(self.scope, step)], args=[row_id, self.ttl_s, *found]))

    async def drop(self) -> None:
        """Forget the indexes (a request's, once it is answered)."""
        if self._steps:
            await self.redis.delete(*(keys.dedup(self.scope, s) for s in self._steps))
