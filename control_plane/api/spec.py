"""Route table with OpenAPI metadata: each route is declared once with its request and
response models, so ``/openapi.json`` is generated from the same table Starlette serves."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Literal

from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

Security = Literal["bearer", "runner", "none"]
Endpoint = Callable[[Request], Awaitable[Response]]


@dataclass(frozen=True)
class RouteSpec:
    """OpenAPI facts about one route."""

    path: str
    method: str
    summary: str
    response: type[BaseModel] | None
    status: int = 200
    request: type[BaseModel] | None = None
    security: Security = "bearer"
    query: dict[str, str] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
    content_type: str = "application/json"
    scope: str | None = None  # checked before the body is read (403 before 422)
    body_required: bool = False  # an empty body is 422, not {} (read_model(required=True))
    error: type[BaseModel] | None = None  # the error body; None = the v1 ErrorBody


class DocumentedRoute(Route):
    """A Starlette route that carries its ``RouteSpec``. Its endpoint is guarded by the
    spec's ``scope`` (checked before the body is read) and runs as one coroutine: the
    request, the scope check, the endpoint and its response, an exception answered by the
    app's handlers (``gate.handle_exception``), as Starlette's ``request_response`` and its
    exception wrapper do in three, with a ``send`` wrapper of their own."""

    def __init__(self, spec: RouteSpec, endpoint: Endpoint) -> None:
        guarded = _requiring(spec.scope, endpoint) if spec.scope else endpoint
        super().__init__(spec.path, guarded, methods=[spec.method], name=endpoint.__name__)
        self.spec = spec
        if inspect.iscoroutinefunction(endpoint):
            self.app = _endpoint_app(endpoint, spec.scope)


def _endpoint_app(endpoint: Endpoint, needs: str | None) -> ASGIApp:
    from control_plane.api.gate import handle_exception
    from control_plane.api.security import principal

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive, send)
        try:
            if needs:
                principal(request).require(needs)
            response = await endpoint(request)
        except Exception as exc:  # nothing sent yet
            await handle_exception(request, exc, scope, receive, send, False)
            return
        # An error while the response is sent goes to the layer's handling, which knows
        # whether it started (``gate.ApiGate``).
        await response(scope, receive, send)

    return app


def route(
    method: str,
    path: str,
    endpoint: Endpoint,
    summary: str,
    response: type[BaseModel] | None,
    *,
    status: int = 200,
    request: type[BaseModel] | None = None,
    security: Security = "bearer",
    query: dict[str, str] | None = None,
    headers: dict[str, str] | None = None,
    content_type: str = "application/json",
    scope: str | None = None,
    error: type[BaseModel] | None = None,
    body_required: bool = False,
) -> DocumentedRoute:
    """Declare one route with its documentation.

    ``scope``: the token scope the route needs, checked before the body is read, so a
    caller who may not write gets 403 whatever the body (not a 422 that validates a body
    for someone who cannot use it). A bearer route with a body gets the scope its path
    implies (``write_scope``) unless it names one ("" = none)."""
    if scope is None and request is not None and security == "bearer":
        scope = write_scope(path)
    spec = RouteSpec(
        path=path,
        method=method,
        summary=summary,
        response=response,
        status=status,
        request=request,
        security=security,
        query=query or {},
        headers=headers or {},
        content_type=content_type,
        scope=scope or None,
        error=error,
        body_required=body_required,
    )
    return DocumentedRoute(spec, endpoint)


def write_scope(path: str) -> str | None:
    """The scope a write with a body on ``path`` needs (None: the path implies none)."""
    if path.startswith(("/v1/admin/", "/v1/pools", "/v1/runners/")):
        return "admin"
    if path.startswith("/v1/models/") and not path.endswith("/infer"):
        return "models:write"
    if path.startswith(("/v1/jobs", "/v1/payloads", "/v1/models/", "/v2/")):
        return "jobs:write"
    return None


def _requiring(scope: str, endpoint: Endpoint) -> Endpoint:
    from control_plane.api.security import principal

    @functools.wraps(endpoint)
    async def guarded(request: Request) -> Response:
        principal(request).require(scope)
        return await endpoint(request)

    return guarded
