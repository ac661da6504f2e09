"""Route table with OpenAPI metadata: each route is declared once with its request and
response models, so ``/openapi.json`` is generated from the same table Starlette serves."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Literal

from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

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


class DocumentedRoute(Route):
    """A Starlette route that carries its ``RouteSpec``."""

    def __init__(self, spec: RouteSpec, endpoint: Endpoint) -> None:
        super().__init__(spec.path, endpoint, methods=[spec.method], name=endpoint.__name__)
        self.spec = spec


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
) -> DocumentedRoute:
    """Declare one route with its documentation."""
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
    )
    return DocumentedRoute(spec, endpoint)
