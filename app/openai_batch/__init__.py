"""The OpenAI Batch API, served (docs/api.md, "OpenAI Batch API, served").

    records.py  uploaded files and batch records in the jobs' Redis
    routes.py   /v1/files and /v1/batches, OpenAI's object shapes
"""

from __future__ import annotations

from fastapi import Depends, FastAPI

from ..auth import principal
from .routes import router


def install(app: FastAPI) -> None:
    app.include_router(router, dependencies=[Depends(principal)])
