"""The sans-IO core shared by :class:`~gpufleet.Client` and :class:`~gpufleet.AsyncClient`.

Every API operation is written once, as a generator that *yields effects* and receives
their results:

* :class:`Send` — send one ``httpx.Request``; the driver sends back the ``httpx.Response``
  or throws the ``httpx.TransportError`` into the generator;
* :class:`Sleep` — wait that many seconds (retry backoff);
* :class:`Authenticate` — a valid access token is needed (``stale``: the one the server
  just refused). Drivers run :meth:`Core.authenticate` under a lock, so concurrent calls
  never present the same rotating refresh token twice.

``Client`` drives these generators with a blocking ``httpx.Client`` and ``time.sleep``;
``AsyncClient`` with ``httpx.AsyncClient`` and ``asyncio.sleep``. Retries, backoff, token
refresh and error mapping therefore exist in one place.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import quote

import httpx

from gpufleet._auth import TokenState
from gpufleet._version import __version__
from gpufleet.errors import AuthError, ConnectionError, error_from_response, retry_after_seconds
from gpufleet.tls import SDK_NAMES, explain
from gpufleet.wire import RefreshRequest, TokenPair, TokenRequest

__all__ = [
    "POOL_LIMITS",
    "Authenticate",
    "Core",
    "Effect",
    "FileSlice",
    "Op",
    "RetryPolicy",
    "Send",
    "Sleep",
    "seg",
]

T = TypeVar("T")


@dataclass(frozen=True)
class Send:
    """Send ``request``; ``external``: to a presigned bucket URL (no API transport, no auth)."""

    request: httpx.Request
    external: bool = False


@dataclass(frozen=True)
class Sleep:
    seconds: float


@dataclass(frozen=True)
class Authenticate:
    stale: str | None = None


Effect = Send | Sleep | Authenticate
Op = Generator[Effect, Any, T]

#: Statuses worth another try: rate limited, and a control plane (or proxy) unavailable.
RETRY_STATUSES_IDEMPOTENT = frozenset({429, 502, 503})
RETRY_STATUSES_ANY = frozenset({429})
#: Transport errors after which a request was certainly not processed.
NOT_SENT_ERRORS: tuple[type[Exception], ...] = (
    httpx.ConnectError,
    httpx.ConnectTimeout,
    httpx.PoolTimeout,
)


#: Connections to the control plane (at most 100, as httpx defaults): every connection a
#: burst opened stays open. httpx keeps only 20 idle ones by default, so 32 concurrent calls
#: would close and reopen a dozen connections after every burst of answers, at a TCP
#: handshake and a server-side setup each.
POOL_LIMITS = httpx.Limits(max_connections=100, max_keepalive_connections=100)


def seg(value: str) -> str:
    """Quote one path segment."""
    return quote(value, safe="")


@dataclass
class RetryPolicy:
    """Exponential backoff with full jitter; ``Retry-After`` wins when the server sends it."""

    max_retries: int = 3
    base_s: float = 0.25
    cap_s: float = 8.0
    max_retry_after_s: float = 60.0
    rng: random.Random = field(default_factory=random.Random)

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to wait before retry number ``attempt + 1``."""
        if retry_after is not None:
            return min(retry_after, self.max_retry_after_s)
        return self.rng.uniform(0.0, min(self.cap_s, self.base_s * 2**attempt))

    def retry_status(self, status: int, idempotent: bool) -> bool:
        allowed = RETRY_STATUSES_IDEMPOTENT if idempotent else RETRY_STATUSES_ANY
        return status in allowed

    def retry_transport(self, exc: Exception, idempotent: bool) -> bool:
        return idempotent or isinstance(exc, NOT_SENT_ERRORS)


class FileSlice(httpx.SyncByteStream, httpx.AsyncByteStream):
    """A request body streamed from ``length`` bytes of a file at ``offset`` (re-iterable,
    so a retried upload starts over). ``on_progress(sent)`` reports bytes sent so far."""

    CHUNK = 1024 * 1024

    def __init__(
        self,
        path: Any,
        offset: int,
        length: int,
        on_progress: Callable[[int], None] | None = None,
    ) -> None:
        self.path = path
        self.offset = offset
        self.length = length
        self.on_progress = on_progress

    def __iter__(self) -> Iterator[bytes]:
        sent = 0
        if self.on_progress is not None:
            self.on_progress(0)
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            while sent < self.length:
                chunk = f.read(min(self.CHUNK, self.length - sent))
                if not chunk:
                    raise OSError(f"{self.path} shrank while uploading")
                sent += len(chunk)
                yield chunk
                if self.on_progress is not None:
                    self.on_progress(sent)

    async def __aiter__(self) -> Any:
        for chunk in self:
            yield chunk


class Core:
    """Connection settings, credentials and the request loop of one client."""

    def __init__(
        self,
        url: str,
        *,
        api_key: str | None,
        token: str | None,
        timeout: float,
        max_retries: int,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"url must start with http:// or https://, got {url!r}")
        self.base_url = url.rstrip("/")
        self.timeout = timeout
        self.clock = clock
        self.tokens = TokenState(api_key=api_key, access_token=token, clock=clock)
        self.retry = RetryPolicy(max_retries=max_retries, rng=rng or random.Random())
        self.user_agent = f"gpufleet-python/{__version__}"
        self.tls_names = SDK_NAMES
        # (model, version) -> (when read, input name -> declared datatype): _ops.cast_inputs
        self.declared: dict[tuple[str, str | None], tuple[float, dict[str, str]]] = {}
        # The client's region setting (docs/regions.md): what jobs and calls carry when
        # they name none.
        self.region: str | None = None
        self.regions_allowed: list[str] | None = None

    # ------------------------------------------------------------------ building requests

    def build(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
        token: str | None = None,
        timeout: float | None = None,
    ) -> httpx.Request:
        """A request to the control plane (``path`` starts with ``/``)."""
        hdrs = {"User-Agent": self.user_agent, "Accept": "application/json"}
        if token is not None:
            hdrs["Authorization"] = f"Bearer {token}"
        hdrs.update(headers or {})
        clean = {k: v for k, v in (params or {}).items() if v is not None}
        return httpx.Request(
            method,
            self.base_url + path,
            params=clean or None,
            json=json,
            headers=hdrs,
            extensions={"timeout": httpx.Timeout(timeout or self.timeout).as_dict()},
        )

    # ------------------------------------------------------------------ the request loop

    def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
        idempotent: bool | None = None,
        auth: bool = True,
        timeout: float | None = None,
    ) -> Op[httpx.Response]:
        """Send one API call with auth, retries and error mapping; returns a 2xx response.

        ``idempotent`` (default: GET/PUT/DELETE) allows retries on 503 and on any
        connection error; other calls are retried only when the server certainly did not
        process them (429, connection refused).
        """
        if idempotent is None:
            idempotent = method in ("GET", "HEAD", "PUT", "DELETE")
        attempt = 0
        renewed = False
        while True:
            token = (yield Authenticate()) if auth else None
            req = self.build(
                method, path, json=json, params=params, headers=headers, token=token,
                timeout=timeout,
            )  # fmt: skip
            try:
                resp: httpx.Response = yield Send(req)
            except httpx.TransportError as exc:
                tls_problem = explain(self.base_url, exc, self.tls_names)
                if tls_problem is not None:  # another try meets the same certificate
                    raise ConnectionError(f"{method} {req.url}: {tls_problem}") from exc
                if attempt < self.retry.max_retries and self.retry.retry_transport(exc, idempotent):
                    yield Sleep(self.retry.delay(attempt))
                    attempt += 1
                    continue
                raise ConnectionError(f"{method} {req.url}: {exc!r}") from exc
            if resp.status_code < 400:
                return resp
            if resp.status_code == 401 and token is not None and not renewed:
                self.tokens.invalidate(token)
                if self.tokens.can_renew:
                    renewed = True
                    continue
            err = error_from_response(resp)
            if attempt < self.retry.max_retries and self.retry.retry_status(
                resp.status_code, idempotent
            ):
                yield Sleep(self.retry.delay(attempt, retry_after_seconds(resp)))
                attempt += 1
                continue
            raise err

    def send_external(self, request: httpx.Request) -> Op[httpx.Response]:
        """Send a request to a presigned bucket URL, retrying connection errors and 5xx."""
        attempt = 0
        while True:
            try:
                resp: httpx.Response = yield Send(request, external=True)
            except httpx.TransportError as exc:
                if attempt < self.retry.max_retries:
                    yield Sleep(self.retry.delay(attempt))
                    attempt += 1
                    continue
                tls_problem = explain(str(request.url), exc, self.tls_names)
                if tls_problem is not None:
                    raise ConnectionError(f"{request.method} {request.url}: {tls_problem}") from exc
                raise ConnectionError(f"{request.method} {request.url}: {exc!r}") from exc
            if resp.status_code >= 500 and attempt < self.retry.max_retries:
                yield Sleep(self.retry.delay(attempt, retry_after_seconds(resp)))
                attempt += 1
                continue
            if resp.status_code >= 400:
                raise error_from_response(resp)
            return resp

    # ------------------------------------------------------------------ tokens

    def authenticate(self, stale: str | None = None) -> Op[str]:
        """A valid access token: the current one, or one from a refresh / key exchange.

        Drivers run this under a lock; a caller that waited for it finds the token already
        renewed by another and returns it without another round trip.
        """
        del stale  # ``invalidate`` already marked the refused token as expired
        tokens = self.tokens
        current = tokens.fresh_token()
        if current is not None:
            return current
        if tokens.refresh_token is not None:
            body = RefreshRequest(refresh_token=tokens.refresh_token).model_dump(mode="json")
            try:
                resp = yield from self.request(
                    "POST", "/v1/auth/refresh", json=body, auth=False, idempotent=False
                )
                return tokens.store(TokenPair.model_validate(resp.json()))
            except AuthError:
                tokens.forget_refresh()
        if tokens.api_key is not None:
            body = TokenRequest(api_key=tokens.api_key).model_dump(mode="json")
            resp = yield from self.request(
                "POST", "/v1/auth/token", json=body, auth=False, idempotent=False
            )
            return tokens.store(TokenPair.model_validate(resp.json()))
        if tokens.access_token is None:
            raise AuthError("no usable credentials: the token was refused and no API key given")
        return tokens.access_token
