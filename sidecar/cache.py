"""The sidecar's cache folder ($SYNTHSERVE_CACHE_DIR, else ~/.cache/synthserve): models
converted from GGUF (loading), weights' block forms and compiled kernels (blockq)."""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "SYNTHSERVE_CACHE_DIR"


def cache_dir() -> Path:
    root = os.environ.get(CACHE_ENV)
    return Path(root) if root else Path.home() / ".cache" / "synthserve"
