"""Control-plane client of the runner: registration and the HMAC-signed job protocol.

Errors (one tree)::

    ControlPlaneError          any failed call (network, 5xx, unexpected answer)
    ├── Unauthorized           401: bad/revoked credentials or a refused join token
    ├── Conflict               409: stale lease token (someone else owns the job)
    └── NotFound               404
"""

from __future__ import annotations

import ssl
from typing import Any, Protocol, TypeVar
from urllib.parse import urlsplit

import httpx
from gpufleet import signing
from gpufleet.tls import SDK_NAMES, SettingNames, explain
from gpufleet.wire import (
    BatchCompleteRequest,
    BatchCompleteResponse,
    ChunksRequest,
    ChunksResponse,
    CompleteRequest,
    CompleteResponse,
    ExtendRequest,
    ExtendResponse,
    HeartbeatRequest,
    HeartbeatResponse,
    JoinTokenCheck,
    JoinTokenCheckRequest,
    LeaseRequest,
    LeaseResponse,
    RegisterRequest,
    RegisterResponse,
    Strict,
)
from pydantic import BaseModel, ValidationError

from runner.credentials import Credentials

M = TypeVar("M", bound=BaseModel)


class JobChannel(Protocol):
    """What :class:`ControlPlaneClient` needs of the dispatch channel."""

    def can_call(self, runner_id: str) -> bool: ...

    async def call(self, kind: str, body: str, timeout_s: float) -> dict[str, Any]: ...


class ControlPlaneError(Exception):
    """A control-plane call failed."""

    def __init__(self, message: str, status: int | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


class Unauthorized(ControlPlaneError):
    """401: credentials revoked or unknown, or the join token was refused."""


class Conflict(ControlPlaneError):
    """409: the lease token is stale."""


class NotFound(ControlPlaneError):
    """404."""


def _refusal(what: str, status: int, err: Any) -> ControlPlaneError:
    """The error for a refused call (``err``: the answer's ``error`` object, if any)."""
    err = err if isinstance(err, dict) else {}
    code, message = err.get("code"), err.get("message")
    text = f"{what} -> {status}" + (f" {code}: {message}" if code or message else "")
    cls = {401: Unauthorized, 409: Conflict, 404: NotFound}.get(status)
    return (cls or ControlPlaneError)(text, status, code)


def _error(resp: httpx.Response) -> ControlPlaneError:
    try:
        err = resp.json().get("error")
    except (ValueError, AttributeError):
        err = None
    return _refusal(f"{resp.request.method} {resp.request.url.path}", resp.status_code, err)


class ControlPlaneClient:
    """Async client; one per daemon. Every call has a timeout."""

    def __init__(
        self,
        base_url: str,
        *,
        timeout_s: float = 15.0,
        transport: httpx.AsyncBaseTransport | None = None,
        verify: ssl.SSLContext | bool = True,
        tls_names: SettingNames = SDK_NAMES,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._timeout_s = timeout_s
        self._tls_names = tls_names
        self._http = httpx.AsyncClient(
            base_url=self.base_url, timeout=timeout_s, transport=transport, verify=verify
        )
        self.credentials: Credentials | None = None
        # The dispatch channel (runner/channel.py) when the daemon runs one: lease and
        # complete go over it while it is open.
        self.channel: JobChannel | None = None
        # Why the control plane last refused a signed call (401): tells a reset store or
        # removed runner ("unknown") from a clock outside the signature window.
        self.last_refusal: str | None = None

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _send(
        self,
        path: str,
        body: Strict,
        out: type[M],
        *,
        signed: bool,
        timeout_s: float | None = None,
    ) -> M:
        data = body.model_dump_json(exclude_none=True).encode()
        headers = {"Content-Type": "application/json"}
        if signed:
            creds = self.credentials
            if creds is None:
                raise Unauthorized("not registered")
            full_path = urlsplit(self.base_url + path).path
            headers.update(
                signing.sign_headers(creds.runner_id, creds.secret, "POST", full_path, "", data)
            )
        try:
            resp = await self._http.post(
                path, content=data, headers=headers, timeout=timeout_s or self._timeout_s
            )
        except httpx.HTTPError as exc:
            tls_problem = explain(self.base_url, exc, self._tls_names)
            if tls_problem is not None:
                raise ControlPlaneError(f"POST {path}: {tls_problem}") from exc
            raise ControlPlaneError(f"POST {path}: {type(exc).__name__}: {exc}") from exc
        if resp.status_code >= 300:
            error = _error(resp)
            if signed and isinstance(error, Unauthorized):
                self.last_refusal = str(error)
            raise error
        try:
            return out.model_validate_json(resp.content)
        except ValidationError as exc:
            raise ControlPlaneError(f"POST {path}: unexpected answer: {exc}") from exc

    def _runner_path(self, suffix: str) -> str:
        if self.credentials is None:
            raise Unauthorized("not registered")
        return f"/v1/runners/{self.credentials.runner_id}{suffix}"

    async def register(self, req: RegisterRequest) -> RegisterResponse:
        """Exchange a join token for a runner id and secret."""
        return await self._send("/v1/runners/register", req, RegisterResponse, signed=False)

    async def check_join_token(self, join_token: str) -> JoinTokenCheck:
        """Would ``join_token`` register a runner now? Uses none of it (``Unauthorized``
        with the control plane's reason when not; ``NotFound`` from a control plane that
        predates the check)."""
        req = JoinTokenCheckRequest(join_token=join_token)
        return await self._send("/v1/runners/join-tokens/check", req, JoinTokenCheck, signed=False)

    async def heartbeat(self, req: HeartbeatRequest) -> HeartbeatResponse:
        return await self._send(
            self._runner_path("/heartbeat"), req, HeartbeatResponse, signed=True
        )

    async def _over_channel(
        self, kind: str, body: Strict, out: type[M], timeout_s: float
    ) -> M | None:
        """``kind`` over the runner's open channel (one authenticated WebSocket instead of
        a signed HTTP request per call); None when no channel is open (then HTTP)."""
        channel, creds = self.channel, self.credentials
        if channel is None or creds is None or not channel.can_call(creds.runner_id):
            return None
        what = f"{kind} over the channel"
        try:
            reply = await channel.call(kind, body.model_dump_json(exclude_none=True), timeout_s)
        except (ConnectionError, TimeoutError) as exc:
            raise ControlPlaneError(f"{what}: {type(exc).__name__}: {exc}") from exc
        status = int(reply.get("status") or 500)
        if status >= 300:
            error = _refusal(what, status, reply.get("error"))
            if isinstance(error, Unauthorized):
                self.last_refusal = str(error)
            raise error
        try:
            return out.model_validate(reply.get("body"))
        except ValidationError as exc:
            raise ControlPlaneError(f"{what}: unexpected answer: {exc}") from exc

    async def lease(self, req: LeaseRequest) -> LeaseResponse:
        """Long poll: the HTTP timeout is the request timeout plus ``wait_s``."""
        answer = await self._over_channel("lease", req, LeaseResponse, self._timeout_s + req.wait_s)
        if answer is not None:
            return answer
        return await self._send(
            self._runner_path("/lease"),
            req,
            LeaseResponse,
            signed=True,
            timeout_s=self._timeout_s + req.wait_s,
        )

    async def extend(self, job_id: str, lease_token: str) -> ExtendResponse:
        return await self._send(
            self._runner_path(f"/jobs/{job_id}/extend"),
            ExtendRequest(lease_token=lease_token),
            ExtendResponse,
            signed=True,
        )

    async def complete(self, job_id: str, req: CompleteRequest) -> CompleteResponse:
        return await self._send(
            self._runner_path(f"/jobs/{job_id}/complete"), req, CompleteResponse, signed=True
        )

    async def complete_batch(self, req: BatchCompleteRequest) -> BatchCompleteResponse:
        """Up to 100 results in one call; each is answered on its own (``committed``,
        ``conflict``, ``not_found``, ``invalid``). NotFound: a control plane without the route."""
        answer = await self._over_channel("complete", req, BatchCompleteResponse, self._timeout_s)
        if answer is not None:
            return answer
        return await self._send(
            self._runner_path("/complete"), req, BatchCompleteResponse, signed=True
        )

    async def append_chunks(self, req: ChunksRequest) -> ChunksResponse:
        """Store partial outputs of a running job (over the channel when it is open).
        Conflict: the lease is not held any more (cancelled, lost): stop streaming the job;
        NotFound: a control plane without streaming."""
        answer = await self._over_channel("chunks", req, ChunksResponse, self._timeout_s)
        if answer is not None:
            return answer
        return await self._send(self._runner_path("/chunks"), req, ChunksResponse, signed=True)
