"""The content-addressed cache of LLM calls (docs/api.md, "LLM-call cache"), and the
per-request client that reads and writes it and prices every call.

A key hashes everything that decides an answer: the backend's provider, base URL and
model, the call kind, the exact messages / prompt / inputs, the generation kwargs (the
structured-output schema included), `n`, and the call's occurrence number: the k-th
identical call in one request or job gets the k-th stored answer, so asking twice for the
same prompt still gives two samples, and a re-run of the request gets the same two back.

CachedClient wraps the process's shared LLMClient for one request or job and stands in for
it everywhere a task takes a client. A request counts occurrences in memory. A job runs in
chunks, on several workers, and is resumed after crashes, so its calls claim their numbers
in Redis: the k-th identical call of unit u claims "u:k" of the job once and keeps its
number for good (a resumed or retried unit gets back the answers it was given), and the
claims of a job re-submitted under a new id take the numbers 0, 1, ... again (every answer
found). The unit comes from `enter_unit` (Task.run_unit calls it). It prices
every completion from the backend's `price_*_per_mtok`; an answer served from the cache
costs nothing and counts in `usage.cached_calls`.

Lookups from calls started in the same event-loop turn go to Redis as one MGET: a thousand
rows starting together cost one round trip. Stores are gathered for STORE_WINDOW_S: answers
come back one at a time, spread over the backend's latency, and a round trip per answer
(~175 us of redis-py CPU) was a tenth of a row's cost at 256 in flight; a row waits a few
ms more for its store, holding no backend slot (bench/cache_and_limits.py, "overhead").
"""

from __future__ import annotations

import asyncio
import contextvars
import hashlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Literal, Protocol

from . import jsonio
from .base import Completion, GenerationKwargs, LLMClient, Message, Usage
from .limits import CALL_GATE

log = logging.getLogger("synthserve.cache")

CacheMode = Literal["on", "off", "refresh"]
KEY_PREFIX = "synthserve:cache:"
CLAIM_PREFIX = "synthserve:cacheocc:"
STORE_WINDOW_S = 0.005
# KEYS: none. ARGV: TTL of a claim in ms, then one line "job digest unit:k" per claim ->
# for each, its number and the entry stored under it (false: none): claim and lookup in one
# round trip. The claims travel as one argument: hundreds of small ones cost redis-py more
# CPU to pack and send than the script costs Redis to run.
_CLAIM = """
local out = {}
for job, digest, member in string.gmatch(ARGV[2], '(%S+) (%S+) (%S+)\\n') do
  local key = '""" + CLAIM_PREFIX + """' .. job .. ':' .. digest
  local n = redis.call('HGET', key, member)
  if not n then
    n = redis.call('HINCRBY', key, '#', 1) - 1
    redis.call('HSET', key, member, n)
    redis.call('PEXPIRE', key, ARGV[1])
  end
  out[#out + 1] = tonumber(n)
  out[#out + 1] = redis.call('GET', '""" + KEY_PREFIX + """' .. digest .. ':' .. n)
end
return out
"""
# The unit a task is running and its count of each identical call so far (None: no unit).
_UNIT: contextvars.ContextVar[tuple[int, dict[str, int]] | None] = contextvars.ContextVar("unit", default=None)


def enter_unit(unit: int) -> None:
    """Calls from here on (in this asyncio task and the tasks it starts) are unit `unit`'s."""
    _UNIT.set((unit, {}))
# KEYS: the entries; ARGV: the TTL in ms, then one value per key
_SET_ALL = """
for i, key in ipairs(KEYS) do
  redis.call('SET', key, ARGV[i + 1], 'PX', ARGV[1])
end
"""


class CallCache:
    """The store on one Redis (`redis.asyncio` client), shared by the process's requests
    and jobs. `hits` and `misses` are read by /metrics."""

    def __init__(self, redis: Any, *, ttl_s: float, enabled: bool = True):
        self.redis = redis
        self.ttl_ms = int(ttl_s * 1000)
        self.enabled = enabled
        self.hits = 0
        self.misses = 0
        self._gets = _Batch(self._mget)
        self._puts = _Batch(self._mset, window_s=STORE_WINDOW_S)
        self._claims = _Batch(self._claim_all)
        self._set_all = redis.register_script(_SET_ALL)
        self._claim = redis.register_script(_CLAIM)

    def client(self, llm: LLMClient, mode: CacheMode | bool | None = None, *, job: str | None = None,
               claim_ttl_s: float = 7 * 86400, budget: Budget | None = None) -> CachedClient:
        """`llm` for one request, or for the job `job`; `mode` as the request gives `cache`
        (None: on)."""
        if mode is None or mode is True:
            mode = "on"
        elif mode is False:
            mode = "off"
        occurrences = JobOccurrences(job, claim_ttl_s) if job is not None else LocalOccurrences()
        return CachedClient(llm, self if self.enabled else None, mode, occurrences, budget)

    async def get(self, key: str) -> bytes | None:
        return await self._gets.add(key, None)

    async def put(self, key: str, value: bytes) -> None:
        """Returns once stored, so a row is answered only after its calls are in the cache
        (a re-run right after it pays nothing). A failed store is logged: it only costs a
        call on the next run."""
        try:
            await self._puts.add(key, value)
        except Exception as exc:  # noqa: BLE001 - the answer is good; only the cache missed it
            log.warning("call cache: store failed: %s", exc)

    async def _mget(self, items: dict[str, Any]) -> dict[str, bytes | None]:
        values = await self.redis.mget([KEY_PREFIX + k for k in items])
        return dict(zip(items, values, strict=True))

    async def _mset(self, items: dict[str, Any]) -> dict[str, None]:
        # one command for the batch: a pipeline of SETs costs redis-py ~20 us of CPU per key
        await self._set_all(keys=[KEY_PREFIX + k for k in items], args=[self.ttl_ms, *items.values()])
        return dict.fromkeys(items)

    async def claim(self, job: str, digest: str, member: str, ttl_ms: int) -> tuple[int, bytes | None]:
        """The number the call `member` ("unit:k") of `job` holds for `digest` (claimed now
        if it had none), and the answer stored under it."""
        return await self._claims.add(f"{job} {digest} {member}\n", ttl_ms)

    async def _claim_all(self, items: dict[str, Any]) -> dict[str, tuple[int, bytes | None]]:
        out = await self._claim(args=[max(items.values()), "".join(items)])
        return {item: (int(out[2 * i]), out[2 * i + 1]) for i, item in enumerate(items)}


class Budget(Protocol):
    """What a job may spend (app.spend.JobBudget): `check` raises LLMError once it is spent."""

    async def check(self) -> None: ...

    async def spend(self, cost_usd: float) -> None: ...


class LocalOccurrences:
    """A request's count of each identical call (one process, one run)."""

    def __init__(self) -> None:
        self._seen: dict[str, int] = {}

    async def find(self, cache: CallCache, digest: str, read: bool) -> tuple[str, bytes | None]:
        """The call's entry key, and what is stored there (when `read`)."""
        n = self._seen.get(digest, 0)
        self._seen[digest] = n + 1
        key = f"{digest}:{n}"
        return key, await cache.get(key) if read else None


class JobOccurrences:
    """A job's numbers, claimed in Redis per (unit, k-th identical call of the unit); calls
    outside a unit (a task that runs its own algorithm over the whole job, resumed whole)
    are counted in memory."""

    def __init__(self, job: str, ttl_s: float):
        self._job = job
        self._ttl_ms = int(ttl_s * 1000)
        self._whole = LocalOccurrences()

    async def find(self, cache: CallCache, digest: str, read: bool) -> tuple[str, bytes | None]:
        scope = _UNIT.get()
        if scope is None:
            return await self._whole.find(cache, digest, read)
        unit, seen = scope
        k = seen.get(digest, 0)
        seen[digest] = k + 1
        n, stored = await cache.claim(self._job, digest, f"{unit}:{k}", self._ttl_ms)
        return f"{digest}:{n}", stored if read else None


class _Batch:
    """Items added in one event-loop turn (or within `window_s` of the first) go to
    `flush(items) -> {key: result}` together; each caller awaits its own key's result (or
    the batch's error)."""

    def __init__(self, flush: Callable[[dict[str, Any]], Awaitable[dict[str, Any]]], *, window_s: float = 0.0):
        self._flush = flush
        self._window_s = window_s
        self._items: dict[str, Any] = {}
        self._waiters: dict[str, list[asyncio.Future[Any]]] = {}
        self._running: set[asyncio.Task[None]] = set()

    def add(self, key: str, item: Any) -> asyncio.Future[Any]:
        if not self._waiters:
            if self._window_s:
                asyncio.get_running_loop().call_later(self._window_s, self._start)
            else:
                asyncio.get_running_loop().call_soon(self._start)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._items[key] = item
        self._waiters.setdefault(key, []).append(future)
        return future

    def _start(self) -> None:
        items, waiters = self._items, self._waiters
        self._items, self._waiters = {}, {}
        task = asyncio.ensure_future(self._run(items, waiters))
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    async def _run(self, items: dict[str, Any], waiters: dict[str, list[asyncio.Future[Any]]]) -> None:
        try:
            results = await self._flush(items)
        except Exception as exc:  # noqa: BLE001 - every waiter gets the error, none hangs
            for futures in waiters.values():
                for f in futures:
                    if not f.done():
                        f.set_exception(exc)
            return
        for key, futures in waiters.items():
            for f in futures:
                if not f.done():
                    f.set_result(results[key])


class CachedClient:
    """One request's (or job's) view of a backend: cached, priced, occurrence-counted.
    Everything else (name, model, capabilities, policy...) is the wrapped client's."""

    def __init__(self, llm: LLMClient, cache: CallCache | None, mode: CacheMode,
                 occurrences: LocalOccurrences | JobOccurrences | None = None, budget: Budget | None = None):
        self._llm = llm
        self._budget = budget
        self._cache = cache if mode != "off" else None
        self._read = mode == "on"
        self._occurrences = occurrences or LocalOccurrences()
        config = llm.config
        self._prices = (getattr(config, "price_input_per_mtok", 0.0) / 1e6,
                        getattr(config, "price_output_per_mtok", 0.0) / 1e6)
        self._backend = [llm.provider, getattr(config, "base_url", None) or ""]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._llm, name)

    # ---- the calls ----

    async def chat(self, messages: list[Message], kwargs: GenerationKwargs, *,
                   model: str | None = None, n: int = 1) -> list[Completion]:
        found = await self._find("chat", model, messages, kwargs, n)
        return await self._completions(found, lambda: self._llm.chat(messages, kwargs, model=model, n=n))

    async def stream_chat(self, messages: list[Message], kwargs: GenerationKwargs, *,
                          model: str | None = None, on_delta: Callable[[str], Any]) -> Completion:
        # the same key as chat(n=1): a streamed answer and a plain one are the same call
        key, stored = await self._find("chat", model, messages, kwargs, 1)
        if stored is not None:
            (completion,) = _completions_of(stored)
            if completion.text:
                on_delta(completion.text)
            return completion
        (completion,) = await self._gated(lambda: _one(
            self._llm.stream_chat(messages, kwargs, model=model, on_delta=on_delta)))
        await self._priced([completion])
        await self._store(key, [completion])
        return completion

    async def complete(self, prompt: str, kwargs: GenerationKwargs, *, model: str | None = None) -> Completion:
        found = await self._find("complete", model, prompt, kwargs, 1)
        (completion,) = await self._completions(found, lambda: _one(self._llm.complete(prompt, kwargs, model=model)))
        return completion

    async def embed(self, inputs: list[str | list[Message]]) -> list[list[float]]:
        key, stored = await self._find("embed", None, inputs, None, 1)
        if stored is not None:
            return CachedVectors(jsonio.loads(stored)["embeddings"])
        vectors = await self._gated(lambda: self._llm.embed(inputs))
        if self._cache is not None and key:
            await self._cache.put(key, jsonio.dumps({"embeddings": vectors}))
        return vectors

    # ---- the machinery ----

    async def _find(self, kind: str, model: str | None, content: Any, kwargs: GenerationKwargs | None,
                    n: int) -> tuple[str, bytes | None]:
        """The call's entry key ("" without a cache), and its stored answer when the cache is read."""
        if self._cache is None:
            return "", None
        options = kwargs.given() if kwargs is not None else {}
        schema = kwargs.json_schema if kwargs is not None else None  # (not one of `given`)
        # (the bytes json.dumps gave with sort_keys, ensure_ascii=False and compact separators,
        # but for a few floats: 1e-05 is now 0.00001, so such calls stored before miss once)
        material = jsonio.dumps([*self._backend, model or self._llm.model, kind, content, options, schema, n],
                                sort_keys=True)
        digest = hashlib.sha256(material).hexdigest()
        try:
            key, stored = await self._occurrences.find(self._cache, digest, self._read)
        except Exception as exc:  # noqa: BLE001 - Redis away: call the backend, as without a cache
            log.warning("call cache: lookup failed: %s", exc)
            return "", None
        if self._read:
            if stored is None:
                self._cache.misses += 1
            else:
                self._cache.hits += 1
        return key, stored

    async def _completions(self, found: tuple[str, bytes | None], call: Callable[[], Any]) -> list[Completion]:
        key, stored = found
        if stored is not None:
            return _completions_of(stored)
        completions = await self._gated(call)
        await self._priced(completions)
        await self._store(key, completions)
        return completions

    async def _gated(self, call: Callable[[], Awaitable[Any]]) -> Any:
        """`call()`, each attempt of which checks the budget once it holds its slot."""
        if self._budget is None:
            return await call()
        token = CALL_GATE.set(self._budget.check)
        try:
            return await call()
        finally:
            CALL_GATE.reset(token)

    async def _priced(self, completions: list[Completion]) -> None:
        per_in, per_out = self._prices
        if per_in or per_out:
            for c in completions:
                c.usage.cost_usd = c.usage.input_tokens * per_in + c.usage.output_tokens * per_out
            if self._budget is not None:
                await self._budget.spend(sum(c.usage.cost_usd for c in completions))

    async def _store(self, key: str, completions: list[Completion]) -> None:
        if self._cache is not None and key:
            await self._cache.put(key, jsonio.dumps({"completions": [
                [c.text, c.model, c.usage.input_tokens, c.usage.output_tokens, c.finish_reason]
                for c in completions]}))


class CachedVectors(list):
    """Embeddings served from the cache: the caller counts the call in `usage.cached_calls`
    (an embedding call carries no usage of its own to put it on)."""


async def _one(call: Any) -> list[Completion]:
    return [await call]


def _completions_of(stored: bytes) -> list[Completion]:
    """Stored answers as this run's: tokens as the backend reported them, no cost, and one
    cached call (on the first completion, as a call's usage rides on its first)."""
    out = [Completion(text, model, Usage(tokens_in, tokens_out), reason)
           for text, model, tokens_in, tokens_out, reason in jsonio.loads(stored)["completions"]]
    out[0].usage.cached_calls = 1
    return out
