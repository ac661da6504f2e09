"""Control-plane client of the runner: registration and the HMAC-signed job protocol.

Errors (one tree)::

    ControlPlaneError          any failed call (network, 5xx, unexpected answer)
    ├── Unauthorized           401: bad/revoked credentials or a refused join token
    ├── Conflict               409: stale lease token (someone else owns the job)
    └── NotFound               404
"""

from __future__ import annotations

from typing import TypeVar
from urllib.parse import urlsplit

import httpx
from gpufleet import signing
from gpufleet.wire import (
    BatchCompleteRequest,
    BatchCompleteResponse,
    CompleteRequest,
    CompleteResponse,
    ExtendRequest,
    ExtendResponse,
    HeartbeatRequest,
    HeartbeatResponse,
    LeaseRequest,
    LeaseResponse,
    RegisterRequest,
    RegisterResponse,
    Strict,
)
from pydantic import BaseModel, ValidationError

from runner.credentials import Credentials

M = TypeVar("M", bound=BaseModel)


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


def _error(resp: httpx.Response) -> ControlPlaneError:
    code = message = None
    try:
        err = resp.json().get("error") or {}
        code, message = err.get("code"), err.get("message")
    except (ValueError, AttributeError):
        pass
    text = f"{resp.request.method} {resp.request.url.path} -> {resp.status_code}"
    text += f" {code}: {message}" if code or message else ""
    cls = {401: Unauthorized, 409: Conflict, 404: NotFound}.get(resp.status_code)
    return (cls or ControlPlaneError)(text, resp.status_code, code)


class ControlPlaneClient:
    """Async client; one per daemon. Every call has a timeout."""

    def __init__(
        self,
        base_url: str,
        *,
        timeout_s: float = 15.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._timeout_s = timeout_s
        self._http = httpx.AsyncClient(
            base_url=self.base_url, timeout=timeout_s, transport=transport
        )
        self.credentials: Credentials | None = None
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

    async def heartbeat(self, req: HeartbeatRequest) -> HeartbeatResponse:
        return await self._send(
            self._runner_path("/heartbeat"), req, HeartbeatResponse, signed=True
        )

    async def lease(self, req: LeaseRequest) -> LeaseResponse:
        """Long poll: the HTTP timeout is the request timeout plus ``wait_s``."""
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
        return await self._send(
            self._runner_path("/complete"), req, BatchCompleteResponse, signed=True
        )
