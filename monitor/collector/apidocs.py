"""ReDoc served entirely from here: fastapi-offline packages the ReDoc bundle, but the bundle itself
fetches its "API docs by Redocly" logo from ``cdn.redoc.ly`` (caught by the browser test). The
bundle is served with that one URL pointed at the packaged favicon instead; nothing else changes."""

from __future__ import annotations

from functools import cache
from importlib import resources

from fastapi import APIRouter, Request
from fastapi.openapi.docs import get_redoc_html
from starlette.responses import HTMLResponse, Response

__all__ = ["REDOC_URL", "STATIC_URL", "router"]

STATIC_URL = "/static-offline-docs"  # where fastapi-offline mounts its packaged assets
REDOC_URL = "/redoc"
_REMOTE_LOGO = "https://cdn.redoc.ly/redoc/logo-mini.svg"

router = APIRouter(include_in_schema=False)


@cache
def redoc_bundle() -> str:
    text = resources.files("fastapi_offline").joinpath("static/redoc.standalone.js").read_text()
    return text.replace(_REMOTE_LOGO, f"{STATIC_URL}/favicon.png")


@router.get(REDOC_URL)
def redoc(request: Request) -> HTMLResponse:
    root = request.scope.get("root_path", "")
    return get_redoc_html(
        openapi_url=f"{root}/openapi.json",
        title="calmon - ReDoc",
        redoc_js_url=f"{root}/redoc.local.js",
        redoc_favicon_url=f"{root}{STATIC_URL}/favicon.png",
        with_google_fonts=False,
    )


@router.get("/redoc.local.js")
def redoc_script() -> Response:
    return Response(redoc_bundle(), media_type="text/javascript", headers={"Cache-Control": "max-age=86400"})
