"""`synthserve worker`: a worker in a process of its own, on a configured Redis (or
joining a server's private one by its unix socket). SIGINT/SIGTERM stop it as
Worker.stop says; a second signal skips the grace period; SIGUSR1 dumps every thread's
stack to stderr."""

from __future__ import annotations

import asyncio
import faulthandler
import logging
import signal
import sys

from .. import heap
from ..config import Settings
from ..spend import Spend
from .store import JobStore
from .worker import Worker

log = logging.getLogger("synthserve.jobs")


async def _serve(settings: Settings) -> int:
    from ..state import AppState

    state = AppState.build(settings)
    for client in state.backends.values():
        try:
            await client.start()
        except Exception as exc:  # a backend that is down marks its rows, it does not stop the worker
            log.warning("backend %s did not start: %s", client.name, exc)
    assert settings.jobs.redis_url  # (run_worker checked)
    store = JobStore.connect(settings.jobs.redis_url, settings.jobs)
    # the backends' rpm/tpm, shared with the API, and the call cache
    spend = Spend.open(settings, state.backends, store.redis)
    worker = Worker(store, state.registry, state.backends, settings.jobs, spend=spend)
    loop = asyncio.get_running_loop()
    signals = 0

    def on_signal() -> None:
        nonlocal signals
        signals += 1
        worker.stop(now=signals > 1)

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)
    faulthandler.register(signal.SIGUSR1)  # `kill -USR1 <pid>`: every thread's stack, to stderr
    heap.settle()
    try:
        await worker.run()
    finally:
        await store.aclose()
        for client in state.backends.values():
            await client.aclose()
    return 0


def run_worker(settings: Settings) -> int:
    if not settings.jobs.redis_url:
        print("synthserve worker: needs [jobs] redis_url: a Redis server, or the private one of "
              "`synthserve serve` (redis_url = \"unix://<its data_dir>/redis.sock\"), which also runs jobs itself",
              file=sys.stderr)
        return 2
    try:
        from uvloop import run
    except ImportError:  # pragma: no cover
        from asyncio import run  # type: ignore[assignment]
    return run(_serve(settings))
