"""The pipeline files of `[pipelines] dir` (relative to the config file): one pipeline per
`*.toml` or `*.json` file, named by its `name` (default: the file's stem). Read when asked
(small files, off the event loop), so a file edited on disk is served as it now is."""

from __future__ import annotations

import json
import logging
import tomllib
from pathlib import Path

from ..config import Settings
from ..errors import InvalidInput, NotFound, SynthserveError
from .definition import Pipeline, parse

log = logging.getLogger("synthserve")
SUFFIXES = (".toml", ".json")


def directory(settings: Settings) -> Path | None:
    configured = settings.pipelines.dir
    if not configured:
        return None
    path = Path(configured)
    if not path.is_absolute() and settings.config_dir is not None:
        path = settings.config_dir / path
    return path


def load_file(path: Path) -> Pipeline:
    try:
        text = path.read_text()
        data = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
        raise InvalidInput(f"pipeline file {path.name}: {exc}") from None
    try:
        return parse(data, default_name=path.stem)
    except InvalidInput as exc:
        raise InvalidInput(f"pipeline file {path.name}: {exc.detail}") from None


def load_all(settings: Settings) -> dict[str, Pipeline]:
    """Every valid pipeline file, by name (a broken file is logged and left out)."""
    found: dict[str, Pipeline] = {}
    root = directory(settings)
    if root is None or not root.is_dir():
        return found
    for path in sorted(p for p in root.iterdir() if p.suffix in SUFFIXES and p.is_file()):
        try:
            pipeline = load_file(path)
        except SynthserveError as exc:
            log.warning("%s", exc.detail)
            continue
        if pipeline.name in found:
            log.warning("pipeline %r is defined twice; %s ignored", pipeline.name, path.name)
            continue
        found[pipeline.name] = pipeline
    return found


def get(settings: Settings, name: str) -> Pipeline:
    pipeline = load_all(settings).get(name)
    root = directory(settings)
    if pipeline is None and root is not None:
        for suffix in SUFFIXES:  # a broken file of that name: say what is wrong with it (422)
            if (root / f"{name}{suffix}").is_file():
                load_file(root / f"{name}{suffix}")
    if pipeline is None:
        raise NotFound(f"unknown pipeline {name!r}; see GET /pipelines")
    return pipeline
