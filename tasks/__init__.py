"""The task registry. Adding a task is a module with `TASKS = (...)` plus one line in
MODULES; tasks defined by files (tasks.custom) join at start-up."""

from __future__ import annotations

import importlib
from collections.abc import Iterable
from pathlib import Path

from .base import InputError, ParseError, RowContext, RowError, Task, TaskParams, TaskRun

__all__ = ["InputError", "ParseError", "Registry", "RowContext", "RowError", "Task", "TaskParams", "TaskRun"]

MODULES = (
    "tasks.generation",
    "tasks.self_instruct",
    "tasks.evol",
    "tasks.evol_generators",
    "tasks.scorers",
    "tasks.sentence_pair",
    "tasks.embeddings",
    "tasks.embedding_data",
    "tasks.magpie",
    "tasks.openai_requests",
)


class Registry:
    def __init__(self, tasks: Iterable[Task] = ()):
        self._tasks: dict[str, Task] = {}
        for task in tasks:
            self.add(task)

    @classmethod
    def builtin(cls) -> Registry:
        return cls(t for m in MODULES for t in importlib.import_module(m).TASKS)

    def add(self, task: Task) -> None:
        if task.name in self._tasks:
            raise ValueError(f"task {task.name!r} is defined twice")
        self._tasks[task.name] = task

    def load_dir(self, path: str | Path) -> None:
        from .custom import load_dir
        for task in load_dir(Path(path), taken=set(self._tasks)):
            self.add(task)

    def get(self, name: str) -> Task | None:
        return self._tasks.get(name)

    def __iter__(self):
        return iter(self._tasks.values())

    def __len__(self) -> int:
        return len(self._tasks)
