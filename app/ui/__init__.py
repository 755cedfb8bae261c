"""The web page, `GET /ui`, and `/docs` (Swagger UI) with its assets served from installed
packages (docs/api.md, "Files in and out, CLI, web page, CORS"): nothing is loaded from
another host, so both work offline. The page is plain HTML and JavaScript (static/)
talking to the same API as any client; it has no build step. There is no /redoc: ReDoc
fetches its logo from its CDN whatever it is told."""

from __future__ import annotations

from pathlib import Path

import fastapi_offline
from fastapi import APIRouter, FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse
from fastapi.staticfiles import StaticFiles

STATIC = Path(__file__).parent / "static"
# Swagger UI 5 (it reads OpenAPI 3.1, which FastAPI writes), as files
DOCS_ASSETS = Path(fastapi_offline.__file__).parent / "static"

router = APIRouter(include_in_schema=False)


@router.get("/ui")
async def page() -> FileResponse:
    return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})


def install(app: FastAPI) -> None:
    """The page, its files, and /docs on local assets (create the app with docs_url=None,
    redoc_url=None)."""
    app.include_router(router)
    app.mount("/ui/static", StaticFiles(directory=STATIC), name="ui-static")
    app.mount("/ui/docs-assets", StaticFiles(directory=DOCS_ASSETS), name="ui-docs-assets")

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(openapi_url=app.openapi_url, title=f"{app.title} - API",
                                   swagger_js_url="/ui/docs-assets/swagger-ui-bundle.js",
                                   swagger_css_url="/ui/docs-assets/swagger-ui.css",
                                   swagger_favicon_url="/ui/docs-assets/favicon.png")
