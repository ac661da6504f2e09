"""Request authentication seams.

- Bearer access tokens: a Starlette ``AuthenticationBackend``, asked by the API's middleware
  layer (``gate.ApiGate``; ``from_memory`` first, which needs no coroutine for a token seen
  before, then ``authenticate``). The backend never fails a request itself; a bad token
  leaves an anonymous user carrying the reason, and ``principal(request)`` raises
  ``Unauthorized`` on routes that need one, so public routes (health, auth, runner routes)
  ignore stray headers.
- Revocation: a bearer's API key is checked against the store at most every few seconds
  (``AuthService.cached_principal``), and on every request to an admin route
  (``admin_route``), so a revoked admin key's token cannot act even once more.
- Runner HMAC signatures: ``signed_runner(request, runner_id)`` reads the (size-limited)
  body once and asks ``RunnerService.authenticate``.
"""

from __future__ import annotations

import re
from typing import Any

from gpufleet._logs import bind
from starlette.authentication import (
    AuthCredentials,
    AuthenticationBackend,
    BaseUser,
)
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import URL
from starlette.requests import HTTPConnection, Request

from control_plane.errors import GpufleetError, RateLimited, Unauthorized
from control_plane.services.auth import AuthService
from control_plane.services.principal import Principal
from control_plane.services.runners import RunnerService
from control_plane.storage.protocols_auth import RunnerRecord


class TokenUser(BaseUser):
    """An authenticated caller (a verified access token)."""

    def __init__(self, principal: Principal) -> None:
        self.principal = principal

    @property
    def is_authenticated(self) -> bool:
        return True

    @property
    def display_name(self) -> str:
        return self.principal.sub

    @property
    def identity(self) -> str:
        return self.principal.sub


class Anonymous(BaseUser):
    """No or an invalid bearer token; ``reason`` says which (``error``: the error to answer,
    e.g. ``RateLimited`` for a throttled API key)."""

    def __init__(self, reason: str, error: GpufleetError | None = None) -> None:
        self.reason = reason
        self.error = error

    @property
    def is_authenticated(self) -> bool:
        return False

    @property
    def display_name(self) -> str:
        return ""


Auth = tuple[AuthCredentials, BaseUser]
# A path that Starlette's ``URL(scope=...).path`` gives back unchanged (it escapes ``?``, ``#``
# and ``\\``, ``urlsplit`` drops tabs and line breaks, and ``//`` would start an authority).
_URL_SAFE_PATH = re.compile(r"(?!//)[^?#\\\t\r\n]*\Z")


class BearerBackend(AuthenticationBackend):
    """Verifies ``Authorization: Bearer <access token>``."""

    def __init__(self, auth: AuthService) -> None:
        self._auth = auth
        # the answer for the principal seen last (the same object while its token is cached)
        self._last: tuple[Principal, Auth] | None = None

    async def authenticate(self, conn: HTTPConnection) -> Auth:
        header = conn.headers.get("authorization")
        known = self.from_memory(conn.scope, header)
        if known is not None:
            return known
        token = header.partition(" ")[2].strip() if header else ""
        fresh = admin_route(conn.scope.get("method", "GET"), _route_path(conn.scope, conn.url.path))
        try:
            # Anything not answered from memory reads storage: verified off the event loop.
            p = await run_in_threadpool(
                self._auth.authenticate, token, fresh=fresh, client=client_address(conn)
            )
        except Unauthorized as exc:
            return AuthCredentials(), Anonymous(exc.message)
        except RateLimited as exc:
            return AuthCredentials(), Anonymous(exc.message, exc)
        return self._answer(p)

    def from_memory(self, scope: Any, header: str | None) -> Auth | None:
        """What :meth:`authenticate` answers for a request (``header``: its first
        ``Authorization`` value) when that needs no I/O: no or a malformed header, or a token
        seen before (``AuthService.cached_principal``) on a route that is not an admin
        route. None: ``authenticate`` must read storage."""
        if not header:
            return AuthCredentials(), Anonymous("missing bearer token")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return AuthCredentials(), Anonymous("expected 'Authorization: Bearer <token>'")
        path = scope["path"]
        if _URL_SAFE_PATH.match(path) is None:  # as ``HTTPConnection.url.path`` reads it
            path = URL(scope=scope).path
        if admin_route(scope.get("method", "GET"), _route_path(scope, path)):
            return None  # the key is read from the store on every admin request
        try:
            p = self._auth.cached_principal(token.strip())
        except Unauthorized as exc:
            return AuthCredentials(), Anonymous(exc.message)
        except RateLimited as exc:
            return AuthCredentials(), Anonymous(exc.message, exc)
        if p is None:
            return None
        last = self._last
        if last is not None and last[0] is p:  # (:meth:`_answer`, without its call)
            return last[1]
        return self._answer(p)

    def _answer(self, p: Principal) -> Auth:
        last = self._last
        if last is not None and last[0] is p:  # (the objects are only read)
            return last[1]
        answer: Auth = (AuthCredentials(sorted(p.scopes)), TokenUser(p))
        self._last = (p, answer)
        return answer


def client_address(conn: HTTPConnection) -> str | None:
    """The caller's address as the server saw it (behind a proxy: as uvicorn's
    ``--forwarded-allow-ips``/``proxy_headers`` resolved it), for failure throttling."""
    return conn.client.host if conn.client else None


def _route_path(scope: Any, path: str) -> str:
    """``path`` as the router matches it: without the app's ``root_path`` (behind a proxy
    that mounts the API under a prefix, uvicorn's ``--root-path``), as Starlette's
    ``get_route_path`` strips it."""
    root = scope.get("root_path") or ""
    if root and path.startswith(root) and path[len(root) : len(root) + 1] == "/":
        return path[len(root) :]
    return path


def admin_route(method: str, path: str) -> bool:
    """Routes that act as an admin: ``/v1/admin/…``, ``/v1/pools…``, the console's
    ``/…/admin…`` pages, and changes to runners (``PATCH``/``DELETE /v1/runners/…``,
    ``…/rotate-secret``). On
    these the caller's API key is read from the store on every request."""
    parts = path.split("/")[1:3]
    if "admin" in parts or path.startswith("/v1/pools"):
        return True
    if path.startswith("/v1/runners/") and path.endswith("/rotate-secret"):
        return True
    return method in ("PATCH", "DELETE") and path.startswith("/v1/runners/")


def principal(request: Request) -> Principal:
    """The verified caller, or ``Unauthorized``."""
    user = request.scope.get("user")
    if isinstance(user, TokenUser):
        bind(tenant=user.principal.tenant)  # on every log line about this request
        return user.principal
    if isinstance(user, Anonymous) and user.error is not None:
        raise user.error
    reason = user.reason if isinstance(user, Anonymous) else "missing bearer token"
    raise Unauthorized(reason)


async def signed_runner(
    request: Request, runners: RunnerService, runner_id: str
) -> tuple[RunnerRecord, bytes]:
    """The runner that signed this request, and the request body it signed."""
    body = await request.body()
    rec = await run_in_threadpool(
        runners.authenticate,
        runner_id,
        request.method,
        request.url.path,
        request.url.query,
        request.headers,
        body,
    )
    return rec, body
