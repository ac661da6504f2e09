"""The console's session: API key -> token pair kept in cookies, CSRF tokens, one wrapper.

Cookies (path ``/console``, HttpOnly, SameSite=Strict, Secure when the request came over
TLS): ``gf_access`` (the access token), ``gf_refresh`` (the refresh token; an expired access
token is refreshed with it on the next request, rotating it as any client would) and
``gf_csrf`` (a random value). The CSRF token of a form is ``HMAC(key, gf_csrf)`` under a key
derived from the signing key (``AuthService.mac``), so every replica accepts it and a page
of another site can neither read nor forge it. Every POST must carry it as the ``csrf``
form field (or the ``X-CSRF-Token`` header): else 403, before the handler runs.

``console(handler)`` turns ``handler(request, session)`` into a route endpoint: no valid
session -> redirect to the sign-in page; a domain error -> the error page with its status
(``not_found`` for another tenant's object, as the API answers).
"""

from __future__ import annotations

import hmac
import logging
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, quote

from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData, UploadFile
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from control_plane.api.context import services
from control_plane.api.errors import STATUS_BY_CODE
from control_plane.api.security import admin_route, client_address
from control_plane.errors import Forbidden, GpufleetError, InvalidRequest, Unauthorized
from control_plane.services.auth import AuthService
from control_plane.services.principal import Principal

log = logging.getLogger(__name__)

PREFIX = "/console"
ACCESS_COOKIE = "gf_access"
REFRESH_COOKIE = "gf_refresh"
CSRF_COOKIE = "gf_csrf"
CSRF_FIELD = "csrf"
CSRF_HEADER = "x-csrf-token"
_CSRF_PURPOSE = "console-csrf"


@dataclass
class Session:
    """The signed-in caller of one request (``principal`` None on the sign-in page)."""

    principal: Principal | None
    csrf: str
    form: FormData | None = None
    cookies: dict[str, str] = field(default_factory=dict)  # to set on the response
    clear: bool = False  # sign-out: delete every console cookie

    @property
    def p(self) -> Principal:
        if self.principal is None:
            raise Unauthorized("sign in first")
        return self.principal

    def can(self, scope: str) -> bool:
        return self.principal is not None and scope in self.principal.scopes

    def value(self, name: str, default: str = "") -> str:
        raw = self.form.get(name) if self.form is not None else None
        return raw if isinstance(raw, str) else default


Handler = Callable[[Request, Session], Awaitable[Response]]


def new_csrf_cookie() -> str:
    return secrets.token_urlsafe(32)


def csrf_token(auth: AuthService, cookie: str) -> str:
    return auth.mac(_CSRF_PURPOSE, cookie)


async def _principal(auth: AuthService, request: Request, s: Session) -> Principal | None:
    """The principal of the access cookie, refreshing it with the refresh cookie once."""
    access = request.cookies.get(ACCESS_COOKIE)
    if access:
        try:
            fresh = admin_route(request.method, request.url.path)
            p = None if fresh else auth.cached_principal(access)
            if p is not None:
                return p
            return await run_in_threadpool(auth.authenticate, access, fresh=fresh)
        except Unauthorized:
            pass
    refresh = request.cookies.get(REFRESH_COOKIE)
    if not refresh:
        return None
    try:
        pair = await run_in_threadpool(auth.refresh, refresh, client_address(request))
    except Unauthorized:
        s.clear = True
        return None
    s.cookies[ACCESS_COOKIE] = pair.access_token
    s.cookies[REFRESH_COOKIE] = pair.refresh_token
    return await run_in_threadpool(
        auth.authenticate, pair.access_token, fresh=admin_route(request.method, request.url.path)
    )


async def _session(request: Request) -> Session:
    auth = services(request).auth
    cookie = request.cookies.get(CSRF_COOKIE)
    fresh = not cookie or len(cookie) > 128
    value = new_csrf_cookie() if fresh else str(cookie)
    s = Session(None, await run_in_threadpool(csrf_token, auth, value))
    if fresh:
        s.cookies[CSRF_COOKIE] = value
    s.principal = await _principal(auth, request, s)
    return s


async def _check_csrf(request: Request, s: Session) -> None:
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind not in ("", "application/x-www-form-urlencoded"):
        raise InvalidRequest("console forms are application/x-www-form-urlencoded", "content-type")
    body = (await request.body()).decode("utf-8", errors="replace")
    pairs: list[tuple[str, str | UploadFile]] = list(parse_qsl(body, keep_blank_values=True))
    s.form = FormData(pairs)
    sent = request.headers.get(CSRF_HEADER) or s.value(CSRF_FIELD)
    if not request.cookies.get(CSRF_COOKIE) or not hmac.compare_digest(
        sent.encode(), s.csrf.encode()
    ):
        raise Forbidden("the form's CSRF token is missing or stale: reload the page")


# Every console answer: never cached (pages show secrets once), never framed, and only this
# origin's scripts, styles and form targets (the templates have no inline script or style).
SECURITY_HEADERS = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'; object-src 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}


def apply_cookies(request: Request, response: Response, s: Session) -> Response:
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    secure = request.url.scheme == "https"
    settings = services(request).settings
    max_age = settings.refresh_token_ttl_s  # the session lasts as long as its refresh token
    if s.clear:
        for name in (ACCESS_COOKIE, REFRESH_COOKIE):
            response.delete_cookie(
                name, path=PREFIX, secure=secure, httponly=True, samesite="strict"
            )
    for name, value in s.cookies.items():
        response.set_cookie(
            name,
            value,
            max_age=max_age,
            path=PREFIX,
            secure=secure,
            httponly=True,
            samesite="strict",
        )
    return response


def redirect(request: Request, url: str) -> Response:
    """A redirect that htmx follows as a full navigation too (``HX-Redirect``)."""
    if request.headers.get("hx-request"):
        return Response(status_code=204, headers={"HX-Redirect": url})
    return RedirectResponse(url, status_code=303)


def console(handler: Handler, *, public: bool = False) -> Callable[[Request], Awaitable[Response]]:
    """A route endpoint around ``handler`` (module docstring)."""

    async def endpoint(request: Request) -> Response:
        from control_plane.api.console.render import error_page

        s = await _session(request)
        try:
            if s.principal is None and not public:
                target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
                response = redirect(request, f"{PREFIX}/signin?next={quote(target, safe='')}")
            else:
                if request.method == "POST":
                    await _check_csrf(request, s)
                response = await handler(request, s)
        except GpufleetError as exc:
            status = STATUS_BY_CODE.get(exc.code, 500)
            if status >= 500:
                log.warning("console %s failed", request.url.path, exc_info=True)
            response = error_page(request, s, status, exc.code, exc.message)
        return apply_cookies(request, response, s)

    return endpoint


def safe_next(raw: Any) -> str:
    """Where to go after sign-in: a console path only (no open redirect)."""
    text = raw if isinstance(raw, str) else ""
    if text.startswith(PREFIX + "/") and not text.startswith("//") and "\\" not in text:
        return text
    return PREFIX + "/fleet"
