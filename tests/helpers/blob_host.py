"""Serving the local blob store's presigned URLs in tests.

The embedded store's presigned URLs name the control plane itself (``/v1/blobs/…``), so
whoever fetches them (the SDK's bucket client, the runner, a test's ``httpx.put``) needs a
real socket behind ``stores.blobs.base_url``. A test whose app runs on uvicorn points the
store at that server (``stores.set_public_url(url)``); the others, whose app is called in
process (``httpx.ASGITransport``) or that have no app at all (service tests), mount an ASGI
app on the :class:`BlobHost`: one uvicorn server per test session (per xdist worker) that
serves each mounted app under a path prefix of its own, so a test pays no server start.

- ``blob_app(store)``: the blob routes alone, behind the real bearer middleware.
- ``serve_blobs(store)``: ``blob_app`` on a uvicorn of its own (the blob contract tests).
"""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.authentication import AuthenticationMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send

from control_plane.api import routes_blobs
from control_plane.api.errors import EXCEPTION_HANDLERS, error_response
from control_plane.api.security import BearerBackend
from control_plane.errors import Unauthorized
from control_plane.storage.local_blobs import LocalBlobStore

__all__ = ["BlobHost", "RefusingAuth", "blob_app", "serve_blobs", "start_uvicorn"]


class _RemembersNothing:
    def remembered(self, token: str) -> None:
        return None


class RefusingAuth:
    """An auth service that knows no token (the bearer backend asks it only when a header
    is sent): blob URLs must work with and without a stray ``Authorization`` header."""

    signer = _RemembersNothing()

    def cached_principal(self, token: str) -> None:
        return None

    def authenticate(self, token: str, **_: Any) -> Any:
        raise Unauthorized("unknown token")


def blob_app(store: LocalBlobStore) -> Starlette:
    """A minimal app: the blob routes behind the real bearer middleware."""
    app = Starlette(
        routes=list(routes_blobs.ROUTES),
        middleware=[Middleware(AuthenticationMiddleware, backend=BearerBackend(RefusingAuth()))],  # type: ignore[arg-type]
        exception_handlers=EXCEPTION_HANDLERS,
    )
    app.state.blobs = store
    return app


def start_uvicorn(app: ASGIApp) -> tuple[uvicorn.Server, threading.Thread, str]:
    """``app`` under uvicorn on 127.0.0.1 (port 0, no lifespan) in a thread; its base URL."""
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    return server, thread, f"http://127.0.0.1:{port}"


@contextlib.contextmanager
def serve_blobs(store: LocalBlobStore) -> Iterator[str]:
    """Serve ``store``'s URLs with uvicorn on 127.0.0.1, port 0; the base URL is set on the
    store once the port is known (as the control plane does with ``--port 0``)."""
    server, thread, url = start_uvicorn(blob_app(store))
    store.base_url = url
    try:
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout=10)


class BlobHost:
    """One loopback server for many apps: ``{url}/{prefix}/v1/blobs/…`` reaches the app
    mounted under ``prefix`` (with ``root_path`` = ``/{prefix}``, so its routes match as
    usual). Started on the first ``mount``; the apps run on the server's thread and loop."""

    def __init__(self) -> None:
        self._apps: dict[str, ASGIApp] = {}
        self._lock = threading.Lock()
        self._server: tuple[uvicorn.Server, threading.Thread, str] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        prefix = scope["path"].lstrip("/").partition("/")[0]
        app = self._apps.get(prefix)
        if app is None:
            response = error_response("not_found", f"nothing mounted at /{prefix}", status=404)
            await response(scope, receive, send)
            return
        root = f"{scope.get('root_path', '')}/{prefix}"
        await app({**scope, "root_path": root}, receive, send)

    @contextlib.contextmanager
    def mount(self, app: ASGIApp) -> Iterator[str]:
        """Serve ``app`` under a fresh prefix while the block runs; its base URL."""
        with self._lock:
            if self._server is None:
                self._server = start_uvicorn(self)
            url = self._server[2]
        prefix = uuid.uuid4().hex[:12]
        self._apps[prefix] = app
        try:
            yield f"{url}/{prefix}"
        finally:
            del self._apps[prefix]

    def close(self) -> None:
        if self._server is not None:
            server, thread, _ = self._server
            server.should_exit = True
            thread.join(timeout=10)
            self._server = None
