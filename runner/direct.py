"""Direct mode: this runner's own KServe v2 HTTP endpoint, for callers with a ticket.

A caller asks the control plane for a ticket (``POST /v1/models/{name}/direct``) and sends
KServe v2 requests here with ``Authorization: Bearer <ticket>``; each is checked offline and
passed to the loopback Triton as it is (no tensor decoded). Off unless ``direct_url`` is set.

Ticket checks (``TicketVerifier``), any failure is a 401 with the reason:

- header ``typ`` ``gf-ticket+jwt``, ``alg`` EdDSA or ES256 and equal to the key's own, a
  ``kid`` found in the control plane's ``GET /v1/auth/jwks`` (cached; re-read every
  ``refresh_s`` and at once on an unknown kid, at most once per ``MIN_REFETCH_S``: a rotated
  key works at once, a rotated-out one stops when it leaves the JWKS);
- signature, ``exp``/``nbf``/``iat`` (``LEEWAY_S``), a lifetime of at most 5 minutes,
  ``iss`` = ``direct_ticket_issuer``, ``aud`` = ``runner:<this runner's id>``;
- ``model`` = the model of the path, ``version`` = the version of the path (a path without
  one is sent to the ticket's version); ``tenant`` and ``sub`` present.

Routes: ``GET /v2/health/live|ready`` (no ticket), ``GET /v2/models/{m}[/versions/{v}]``,
``GET …/ready``, ``POST …/infer`` (ticket). Nothing else (the repository API stays closed).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import jwt
from aiohttp import ClientError, ClientSession, ClientTimeout, TCPConnector, web

log = logging.getLogger(__name__)

TICKET_TYPE = "gf-ticket+jwt"
ALGORITHMS = ("EdDSA", "ES256")
LEEWAY_S = 5
MAX_TICKET_LIFETIME_S = 300
MIN_REFETCH_S = 1.0
MAX_BODY_BYTES = 512 * 1024 * 1024
CHECKED_CACHE_SIZE = 10_000
_REQUIRED = ["exp", "iat", "iss", "aud", "sub", "tenant", "model", "version"]
_PASS_REQUEST = ("Content-Type", "Inference-Header-Content-Length", "Content-Encoding")
_PASS_ANSWER = ("Content-Type", "Inference-Header-Content-Length", "Content-Encoding")


class TicketRefused(Exception):
    """The ticket does not allow this request (the message says why)."""


@dataclass
class DirectCounters:
    served: int = 0
    refused: int = 0
    jwks_fetches: int = 0
    refusals: dict[str, int] = field(default_factory=dict)


class TicketVerifier:
    """Checks tickets with the control plane's public keys (fetched from its JWKS)."""

    def __init__(
        self,
        jwks_url: str,
        runner_id: Callable[[], str | None],
        issuer: str,
        http: httpx.AsyncClient,
        *,
        refresh_s: float = 60.0,
        counters: DirectCounters | None = None,
    ) -> None:
        self._url = jwks_url
        self._runner_id = runner_id
        self._issuer = issuer
        self._http = http
        self._refresh_s = refresh_s
        self._keys: dict[str, tuple[str, Any]] = {}
        self._fetched_at = float("-inf")
        self._lock = asyncio.Lock()
        self.counters = counters or DirectCounters()
        # ticket -> (kid, claims): a checked signature is not checked again until the ticket
        # expires (a caller sends the same ticket for minutes); the kid must still be known
        self._checked: dict[str, tuple[str, dict[str, Any]]] = {}

    async def _fetch(self) -> None:
        """Replace the keys with the JWKS's; on failure keep the old ones (logged)."""
        self._fetched_at = time.monotonic()
        self.counters.jwks_fetches += 1
        try:
            resp = await self._http.get(self._url)
            resp.raise_for_status()
            keys: dict[str, tuple[str, Any]] = {}
            for jwk in resp.json().get("keys", []):
                alg, kid = jwk.get("alg"), jwk.get("kid")
                if alg in ALGORITHMS and isinstance(kid, str):
                    keys[kid] = (alg, jwt.PyJWK(jwk, alg).key)
        except (httpx.HTTPError, ValueError, jwt.PyJWTError) as exc:
            log.warning(
                "direct mode: JWKS %s not read (%s); keeping %d keys",
                self._url,
                exc,
                len(self._keys),
            )
            return
        self._keys = keys

    async def _key(self, kid: str) -> tuple[str, Any] | None:
        """The key ``kid``: an unknown kid refetches the JWKS (a rotation), at most once per
        ``MIN_REFETCH_S``; a request that comes sooner after a fetch waits for the next one
        instead of being refused (a ticket of a key rotated in just now must pass)."""
        age = time.monotonic() - self._fetched_at
        if age >= self._refresh_s or kid not in self._keys:
            async with self._lock:  # one fetch for every request waiting on it
                if kid in self._keys and time.monotonic() - self._fetched_at < self._refresh_s:
                    return self._keys[kid]  # fetched while this request waited
                wait = MIN_REFETCH_S - (time.monotonic() - self._fetched_at)
                if wait > 0:
                    await asyncio.sleep(wait)
                await self._fetch()
        return self._keys.get(kid)

    async def verify(self, token: str, model: str, version: str | None) -> dict[str, Any]:
        """The ticket's claims if it allows calling ``model`` (``version``) here."""
        runner_id = self._runner_id()
        if runner_id is None:
            raise TicketRefused("runner not registered yet")
        hit = self._checked.get(token)
        if (
            hit is not None
            and hit[1]["exp"] + LEEWAY_S > time.time()
            and hit[1]["aud"] == f"runner:{runner_id}"
            and await self._key(hit[0]) is not None  # its key still verifies
        ):
            return _allows(hit[1], model, version)
        if hit is not None:
            del self._checked[token]
        claims = await self._check_signature(token, runner_id)
        if len(self._checked) >= CHECKED_CACHE_SIZE:
            self._checked.clear()
        self._checked[token] = (str(jwt.get_unverified_header(token)["kid"]), claims)
        return _allows(claims, model, version)

    async def _check_signature(self, token: str, runner_id: str) -> dict[str, Any]:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise TicketRefused("malformed ticket") from exc
        if header.get("typ") != TICKET_TYPE:
            raise TicketRefused("not a direct-mode ticket")
        kid = header.get("kid")
        key = await self._key(kid) if isinstance(kid, str) and kid else None
        if key is None:
            raise TicketRefused("ticket signed by an unknown or retired key")
        alg, public = key
        if header.get("alg") != alg:
            raise TicketRefused("ticket algorithm does not match its key")
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                public,
                algorithms=[alg],
                audience=f"runner:{runner_id}",
                issuer=self._issuer,
                leeway=LEEWAY_S,
                options={"require": _REQUIRED},
            )
        except jwt.ExpiredSignatureError as exc:
            raise TicketRefused("ticket expired") from exc
        except jwt.InvalidAudienceError as exc:
            raise TicketRefused("ticket is for another runner") from exc
        except jwt.PyJWTError as exc:
            raise TicketRefused(f"invalid ticket ({exc})") from exc
        iat, exp = claims["iat"], claims["exp"]
        if not isinstance(iat, int) or not isinstance(exp, int):
            raise TicketRefused("ticket times must be integers")
        if exp - iat > MAX_TICKET_LIFETIME_S:
            raise TicketRefused("ticket lifetime over 5 minutes")
        if not isinstance(claims["tenant"], str) or not claims["tenant"]:
            raise TicketRefused("ticket names no tenant")
        return claims


def _allows(claims: dict[str, Any], model: str, version: str | None) -> dict[str, Any]:
    """``claims`` when they name ``model`` (and ``version`` when the path gives one)."""
    if claims["model"] != model:
        raise TicketRefused(f"ticket is for model {claims['model']!r}, not {model!r}")
    if version is not None and str(claims["version"]) != version:
        raise TicketRefused(f"ticket is for version {claims['version']}, not {version}")
    return claims


def _error(status: int, message: str, **headers: str) -> web.Response:
    return web.Response(
        status=status,
        text=json.dumps({"error": message}),
        content_type="application/json",
        headers=headers,
    )


class DirectServer:
    """The KServe v2 HTTP endpoint of direct mode, in front of the loopback Triton."""

    def __init__(
        self,
        verifier: TicketVerifier,
        triton_base: str,
        ready: Callable[[], bool],
        *,
        host: str,
        port: int,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self._verifier = verifier
        self._triton = triton_base.rstrip("/")
        self._ready = ready
        self._host = host
        self._port = port
        self._ssl = ssl_context
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None
        self._session: ClientSession | None = None
        self.counters = verifier.counters

    @property
    def port(self) -> int:
        server = self._site._server if self._site is not None else None
        sockets = getattr(server, "sockets", None)
        return int(sockets[0].getsockname()[1]) if sockets else self._port

    def app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY_BYTES)
        app.router.add_get("/v2/health/live", self._live)
        app.router.add_get("/v2/health/ready", self._health_ready)
        for base in ("/v2/models/{model}", "/v2/models/{model}/versions/{version}"):
            app.router.add_get(base, self._proxy)
            app.router.add_get(base + "/ready", self._proxy)
            app.router.add_post(base + "/infer", self._proxy)
        return app

    async def start(self) -> None:
        self._session = ClientSession(
            connector=TCPConnector(limit=1024),
            timeout=ClientTimeout(total=None, connect=10.0),
            skip_auto_headers=("User-Agent", "Content-Type", "Accept-Encoding"),
            auto_decompress=False,
        )
        self._runner = web.AppRunner(self.app(), access_log=None)
        await self._runner.setup()
        self._site = web.TCPSite(self._runner, self._host, self._port, ssl_context=self._ssl)
        await self._site.start()
        log.info("direct mode: KServe v2 on %s:%d", self._host, self.port)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
            self._site = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _live(self, request: web.Request) -> web.Response:
        return web.Response(status=200)

    async def _health_ready(self, request: web.Request) -> web.Response:
        return web.Response(status=200 if self._ready() else 503)

    async def _proxy(self, request: web.Request) -> web.StreamResponse:
        model = request.match_info["model"]
        version = request.match_info.get("version")
        auth = request.headers.get("Authorization", "")
        if not auth.lower().startswith("bearer "):
            return self._refuse("a ticket is required (Authorization: Bearer <ticket>)")
        try:
            claims = await self._verifier.verify(auth[7:].strip(), model, version)
        except TicketRefused as exc:
            return self._refuse(str(exc))
        pinned = str(claims["version"])
        tail = (
            request.path.split(f"/versions/{version}", 1)[1]
            if version
            else (request.path[len(f"/v2/models/{model}") :])
        )
        url = f"{self._triton}/v2/models/{model}/versions/{pinned}{tail}"
        headers = {h: request.headers[h] for h in _PASS_REQUEST if h in request.headers}
        if self._session is None:
            return _error(503, "direct endpoint stopping")
        body = await request.read() if request.method == "POST" else None
        try:
            async with self._session.request(
                request.method, url, data=body, headers=headers
            ) as resp:
                answer = await resp.read()
                out = {h: resp.headers[h] for h in _PASS_ANSWER if h in resp.headers}
                status = resp.status
        except (TimeoutError, OSError, ClientError) as exc:
            return _error(503, f"Triton not reachable on this runner ({type(exc).__name__})")
        self.counters.served += 1
        return web.Response(status=status, body=answer, headers=out)

    def _refuse(self, reason: str) -> web.Response:
        self.counters.refused += 1
        key = reason.split(" (")[0]
        self.counters.refusals[key] = self.counters.refusals.get(key, 0) + 1
        return _error(401, reason, **{"WWW-Authenticate": 'Bearer error="invalid_token"'})


def tls_context(cert: Any, key: Any) -> ssl.SSLContext | None:
    """A server TLS context for the direct endpoint (None: plain HTTP)."""
    if cert is None:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(str(cert), str(key))
    return ctx


async def stop_quietly(server: DirectServer) -> None:
    with contextlib.suppress(Exception):
        await server.stop()
