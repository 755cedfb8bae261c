"""What the app holds while it runs: settings, the task registry, one client per backend,
and the job engine's two handles (composed in app.main's lifespan)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from llm_clients import LLMClient, build_client
from tasks import Registry, Task, TaskRun

from .config import Settings
from .errors import InvalidInput, NotFound
from .jobs.follow import EventHub
from .jobs.store import JobStore
from .runs import RunRequest, build_run

if TYPE_CHECKING:
    from .metrics import Metrics
    from .spend import Spend

log = logging.getLogger("synthserve")


@dataclass
class AppState:
    settings: Settings
    registry: Registry
    backends: dict[str, LLMClient]
    api_keys: frozenset[str] = frozenset()
    # set in the lifespan (app.main), before any request
    jobs: JobStore = field(init=False)
    events: EventHub = field(init=False)
    metrics: Metrics = field(init=False)
    spend: Spend = field(init=False)  # the call cache and the shared rate limits, on the jobs' Redis

    @classmethod
    def build(cls, settings: Settings) -> AppState:
        registry = Registry.builtin()
        if settings.tasks.custom_dir:
            path = Path(settings.tasks.custom_dir)
            if not path.is_absolute() and settings.config_dir is not None:
                path = settings.config_dir / path
            registry.load_dir(path)
        backends = {name: build_client(name, cfg) for name, cfg in settings.backends.items()}
        return cls(settings=settings, registry=registry, backends=backends,
                   api_keys=settings.server.api_keys())

    def task(self, name: str) -> Task:
        task = self.registry.get(name)
        if task is None:
            raise NotFound(f"unknown task {name!r}; see GET /tasks")
        return task

    def backend(self, name: str | None) -> tuple[str, LLMClient]:
        """The backend a request names (None: the default) -> (its name, its client)."""
        name = name or self.settings.llm.default_backend
        client = self.backends.get(name) if name else None
        if name is None or client is None:
            raise InvalidInput(f"llm.backend: unknown backend {name!r}; configured: {sorted(self.backends)}")
        return name, client

    def prepare_run(self, task_name: str, req: RunRequest) -> tuple[Task, TaskRun]:
        """The request's task and its validated run (every 4xx before any call)."""
        task = self.task(task_name)
        _, client = self.backend(req.llm.backend)
        server = self.settings.server
        return task, build_run(task, client, req, max_rows=server.max_rows_per_request,
                               max_output_rows=server.max_output_rows_per_request,
                               max_field_chars=server.max_field_chars)

    async def start_backends(self) -> None:
        for client in self.backends.values():
            try:
                await client.start()
            except Exception as exc:  # a backend that is down must not keep the others from serving
                log.warning("backend %s did not start: %s", client.name, exc)

    async def close_backends(self) -> None:
        for client in self.backends.values():
            await client.aclose()
