"""What the app holds while it runs: settings, the task registry, one client per backend,
and the job manager. Built in the lifespan, closed there."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llm_clients import LLMClient, build_client
from tasks import Registry

from .config import Settings

log = logging.getLogger("synthserve")


@dataclass
class AppState:
    settings: Settings
    registry: Registry
    backends: dict[str, LLMClient]
    jobs: Any = None  # app.jobs manager, set in the lifespan
    metrics: Any = None  # app.metrics.Metrics, set in the lifespan
    api_keys: frozenset[str] = frozenset()
    extras: dict[str, Any] = field(default_factory=dict)

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

    async def start(self) -> None:
        for client in self.backends.values():
            try:
                await client.start()
            except Exception as exc:  # a backend that is down must not keep the others from serving
                log.warning("backend %s did not start: %s", client.name, exc)
        from .jobs import open_jobs  # here, not at import: app.jobs imports this module
        self.jobs = open_jobs(self)
        await self.jobs.start()

    async def aclose(self) -> None:
        if self.jobs is not None:  # first: in-process jobs use the backends
            await self.jobs.aclose()
        for client in self.backends.values():
            await client.aclose()
