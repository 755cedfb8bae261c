"""Batch jobs (API.md, "Jobs").

    keys.py     every Redis key name
    models.py   the job object, its spec, events, chunks
    queue.py    the producer: validate, plan chunks, enqueue
    store.py    job state in Redis (JobStore: what the routes read)
    scripts.py  the Lua that changes it atomically
    runner.py   one chunk through Task.stream (shared by both workers)
    writer.py   the worker's batched saves
    claims.py   the worker's side of the consumer group (read, keep, reclaim, release, ack)
    worker.py   the Redis consumer (`synthserve worker`)
    local.py    the in-process store and worker, without Redis (not durable)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .store import JobStore

if TYPE_CHECKING:
    from ..state import AppState

__all__ = ["JobStore", "open_jobs"]


def open_jobs(state: AppState) -> JobStore:
    """The API's job store: Redis with `[jobs] redis_url`, else in process."""
    config = state.settings.jobs
    if config.redis_url:
        from .store import RedisJobStore
        return RedisJobStore.from_config(config)
    from .local import LocalJobStore
    return LocalJobStore(state.registry, state.backends, config)
