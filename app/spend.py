"""Never pay twice, never overspend (docs/api.md, "LLM-call cache" and "Spend and rate
limits"), for one process: the call cache and the rpm/tpm buckets on the jobs' Redis,
back-pressure on a backend's queue of waiting calls, and `dry_run` estimates.

    cache.py (llm_clients)      the cache and the per-request client that prices calls
    ratelimit.py (llm_clients)  the shared token buckets
    adaptive.py (llm_clients)   the adaptive in-flight limit
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from fastapi.responses import JSONResponse

from llm_clients import Completion, GenerationKwargs, LLMClient, LLMError, Message, Usage
from llm_clients.cache import CacheMode, CachedClient, CallCache
from llm_clients.ratelimit import RateLimiter, estimate_tokens
from tasks import Task, TaskRun

from .config import Settings
from .errors import Overloaded
from .jobs import keys

# max_output_tokens of a call that gives no max_new_tokens (the local backend's default)
DEFAULT_MAX_NEW_TOKENS = 256


class Spend:
    """What a process (the API or a worker) holds for the cache and the limits."""

    def __init__(self, settings: Settings, redis: Any, cache: CallCache | None):
        self.settings = settings
        self.redis = redis
        self.cache = cache

    @classmethod
    def open(cls, settings: Settings, backends: Mapping[str, LLMClient], redis: Any) -> Spend:
        """Attach the shared rate limits to the backends' policies and open the cache, on
        `redis` (a `redis.asyncio` client the caller closes)."""
        for name, client in backends.items():
            config = settings.backends.get(name)
            if config is not None and (config.rpm or config.tpm):
                client.policy.rate = RateLimiter(redis, name, rpm=config.rpm, tpm=config.tpm)
        cache = settings.cache
        return cls(settings, redis, CallCache(redis, ttl_s=cache.ttl_days * 86400, enabled=cache.enabled))

    def client(self, llm: LLMClient, mode: CacheMode | bool | None) -> CachedClient:
        """The client one request or job runs on: cached (unless `mode` says not) and priced."""
        if self.cache is None:
            return CachedClient(llm, None, "off")
        return self.cache.client(llm, mode)

    def job_client(self, llm: LLMClient, job_id: str, spec: Any,
                   cancel: Callable[[str], Awaitable[Any]]) -> CachedClient:
        """The client a job's chunks run on in this worker: cached per the job's `cache`,
        its identical calls numbered per unit in Redis, its calls stopped at `max_cost_usd`
        (then `cancel(error)` ends the job)."""
        budget = None
        if spec.max_cost_usd is not None:
            budget = JobBudget(self.redis, job_id, spec.max_cost_usd, cancel, ttl_s=self.settings.jobs.result_ttl_s)
        if self.cache is None:
            return CachedClient(llm, None, "off", budget=budget)
        return self.cache.client(llm, spec.cache, job=job_id, claim_ttl_s=self.settings.jobs.result_ttl_s,
                                 budget=budget)

    def admit(self, llm: LLMClient, mode: CacheMode | bool | None) -> CachedClient:
        """`client(llm, mode)` for a new request, refused (429) while the backend's queue of
        calls waiting for a slot is deeper than [server] max_queued_calls."""
        waiting = llm.policy.slots.waiting
        if waiting > self.settings.server.max_queued_calls:
            raise Overloaded(f"backend {llm.name!r} has {waiting} calls waiting (more than "
                             f"[server] max_queued_calls = {self.settings.server.max_queued_calls}); "
                             "retry later", retry_after=1)
        return self.client(llm, mode)


class JobBudget:
    """A job's `max_cost_usd`, shared by every worker running it: what its calls cost is
    summed in Redis (INCRBYFLOAT) as they answer, and checked by each call once it holds its
    backend slot, just before it goes out (limits.CALL_GATE). Reaching it cancels the job,
    and with it the calls still in flight (paid, if the backend had answered them)."""

    def __init__(self, redis: Any, job_id: str, limit: float, cancel: Callable[[str], Awaitable[Any]], *,
                 ttl_s: int):
        self.redis = redis
        self.job_id = job_id
        self.key = keys.spent(job_id)
        self.limit = limit
        self.cancel = cancel
        self.ttl_s = ttl_s
        self.reached = False

    async def check(self) -> None:
        if not self.reached:
            spent = float(await self.redis.get(self.key) or 0)
            if spent < self.limit:
                return
            self.reached = True
            await self.cancel(f"max_cost_usd reached: the job's calls cost ${spent:.6f} "
                              f"(budget ${self.limit:g}); POST /jobs/{self.job_id}/retry with a new max_cost_usd goes on")
        raise LLMError("not called: the job's max_cost_usd is reached")

    async def spend(self, cost_usd: float) -> None:
        if cost_usd:
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.incrbyfloat(self.key, cost_usd)
                pipe.expire(self.key, self.ttl_s)
                await pipe.execute()


async def dry_run(task: Task, run: TaskRun) -> JSONResponse:
    """The answer to `"dry_run": true` (schemas.DryRunOut)."""
    return JSONResponse(await estimate(task, run))


async def estimate(task: Task, run: TaskRun) -> dict[str, Any]:
    """`dry_run`: the request run against a client that answers every call with nothing
    and counts it; calls, input tokens (about 4 characters a token), the most output
    tokens they may produce, and what that would cost at the backend's prices. Multi-step
    tasks whose later calls depend on the answers are counted with empty answers."""
    dry = DryRunClient(run.llm)
    run.llm = dry  # type: ignore[assignment]
    async for _ in task.stream(run):
        pass
    config = dry.config
    cost = (dry.input_tokens * getattr(config, "price_input_per_mtok", 0.0)
            + dry.max_output_tokens * getattr(config, "price_output_per_mtok", 0.0)) / 1e6
    return {"calls": dry.calls, "input_tokens": dry.input_tokens, "max_output_tokens": dry.max_output_tokens,
            "cost_usd": round(cost, 9)}


class DryRunClient:
    """Stands in for a backend in `estimate`: no call leaves the process."""

    def __init__(self, llm: LLMClient):
        self._llm = llm
        self.calls = 0
        self.input_tokens = 0
        self.max_output_tokens = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._llm, name)

    def _count(self, content: Any, kwargs: GenerationKwargs | None, n: int) -> Usage:
        tokens = estimate_tokens(content)
        calls = 1 if self._llm.native_n else n
        self.calls += calls
        self.input_tokens += tokens * calls
        if kwargs is not None:
            self.max_output_tokens += (kwargs.max_new_tokens or DEFAULT_MAX_NEW_TOKENS) * n
        return Usage(tokens * calls, 0)

    async def chat(self, messages: list[Message], kwargs: GenerationKwargs, *,
                   model: str | None = None, n: int = 1) -> list[Completion]:
        usage = self._count(messages, kwargs, n)
        return [Completion("", model or self.model, usage if i == 0 else Usage()) for i in range(n)]

    async def stream_chat(self, messages: list[Message], kwargs: GenerationKwargs, *,
                          model: str | None = None, on_delta=None) -> Completion:
        return Completion("", model or self.model, self._count(messages, kwargs, 1))

    async def complete(self, prompt: str, kwargs: GenerationKwargs, *, model: str | None = None) -> Completion:
        return Completion("", model or self.model, self._count(prompt, kwargs, 1))

    async def embed(self, inputs: list[Any]) -> list[list[float]]:
        self._count(inputs, None, 1)
        return [[0.0] for _ in inputs]

    async def apply_chat_template(self, messages: list[Message]) -> str:
        return "".join(str(m.get("content", "")) for m in messages)
