"""API fixtures: settings -> stores -> services -> app -> httpx client in process.

The stores are the embedded SQLite store unless a test says otherwise (``store_kind``, see
tests/conftest.py); its blob URLs are served by this test's app, mounted on the blob host.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest

from control_plane import clock
from control_plane.app import create_app
from control_plane.composition import Services, build_services
from control_plane.storage.stores import Stores
from tests.conftest import serve_blobs_through
from tests.helpers.clock import FakeClock

TokenFor = Callable[..., Awaitable[dict[str, str]]]


@pytest.fixture
def now(request: pytest.FixtureRequest) -> Callable[[], float]:
    """The services' clock: the real one, or a :class:`FakeClock` the test moves when it is
    parametrized ``@pytest.mark.parametrize("now", ["fake"], indirect=True)``."""
    return FakeClock() if getattr(request, "param", None) == "fake" else clock.now


@pytest.fixture
def services(settings: Any, stores: Stores, now: Callable[[], float]) -> Services:
    return build_services(settings, stores, now=now)


@pytest.fixture
def app(settings: Any, services: Services, stores: Stores, request: pytest.FixtureRequest) -> Any:
    """The app; on the embedded store its blob URLs are served by this app."""
    return serve_blobs_through(create_app(settings, services), stores, request)


@pytest.fixture
async def client(app: Any) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://cp.test") as c:
        yield c


@pytest.fixture
def api_key(services: Services) -> Callable[..., str]:
    """Create an API key directly in the store: ``api_key(role, tenant)``."""

    def make(role: str = "user", tenant: str = "acme") -> str:
        return services.auth.issue_api_key(tenant, role, f"{role}@{tenant}").api_key

    return make


@pytest.fixture
def auth_headers(client: httpx.AsyncClient, api_key: Callable[..., str]) -> TokenFor:
    """``await auth_headers(role, tenant)`` -> Authorization header of a fresh access token."""

    async def make(role: str = "user", tenant: str = "acme") -> dict[str, str]:
        r = await client.post("/v1/auth/token", json={"api_key": api_key(role, tenant)})
        assert r.status_code == 200, r.text
        return {"Authorization": f"Bearer {r.json()['access_token']}"}

    return make


def assert_error(r: httpx.Response, status: int, code: str) -> dict[str, Any]:
    """The response is the v1 error shape with this status and code."""
    assert r.status_code == status, r.text
    body = r.json()
    assert body["api_version"] == "v1"
    assert set(body) == {"api_version", "error"}
    assert body["error"]["code"] == code
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    return dict(body["error"])
