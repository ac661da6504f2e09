"""The API reference in a browser: ``/docs`` (ReDoc, a pinned bundle committed under
``control_plane/static/redoc/``, reading ``/openapi.json``) and ``/`` pointing there.

No CDN: the page and its script come from this control plane, so the docs work offline and
the script is the one reviewed in the repository (``REDOC_SHA256``)."""

from __future__ import annotations

from pathlib import Path

from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, RedirectResponse, Response

from control_plane.api.spec import route

STATIC = Path(__file__).resolve().parent.parent / "static" / "redoc"
REDOC_VERSION = "2.1.5"
REDOC_SHA256 = "be5c3330c8c35b8fceb29a5b7552ad45bffc2fd9494fe2e1a82fa94179eb5f8f"

PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>gpufleet API</title>
</head>
<body>
<redoc spec-url="/openapi.json" hide-download-button="false"></redoc>
<script src="/docs/redoc.standalone.js"></script>
</body>
</html>
"""


async def docs(request: Request) -> Response:
    return HTMLResponse(PAGE, headers={"Cache-Control": "no-cache"})


async def redoc_script(request: Request) -> Response:
    return FileResponse(
        STATIC / "redoc.standalone.js",
        media_type="application/javascript",
        headers={"Cache-Control": "public, max-age=86400"},
    )


async def root(request: Request) -> Response:
    """``/``: the API reference (a browser's first stop), instead of a 404."""
    return RedirectResponse("/docs", status_code=307, headers={"Content-Type": "text/plain"})


ROUTES = [
    route(
        "GET",
        "/",
        root,
        "Redirect to /docs",
        None,
        status=307,
        security="none",
        content_type="text/plain",
    ),
    route(
        "GET",
        "/docs",
        docs,
        "API reference (HTML)",
        None,
        security="none",
        content_type="text/html",
    ),
    route(
        "GET",
        "/docs/redoc.standalone.js",
        redoc_script,
        "The API reference's script",
        None,
        security="none",
        content_type="application/javascript",
    ),
]
