"""Item 1: revoking an API key stops every token minted from it, on every replica.

Two replicas are two apps built on one store (as two processes behind a load balancer). A
replica that did not see the revocation stops a token within ``revocation_check_s``, and at
once on admin routes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from control_plane.app import create_app
from control_plane.composition import build_services
from control_plane.storage.stores import Stores
from tests.conftest import STORE_KINDS
from tests.control_plane.api.conftest import TokenFor, assert_error
from tests.helpers.clock import FakeClock

CHECK_S = 0.5

JOB = {
    "model": "add_sub",
    "inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}],
}


@pytest.fixture
def settings(settings: Any) -> Any:
    return settings.model_copy(update={"revocation_check_s": CHECK_S})


@pytest.fixture
def b_clock() -> FakeClock:
    """Replica B's monotonic clock: its revocation-state cache ages only when moved."""
    return FakeClock()


@pytest.fixture
async def replica_b(
    settings: Any, stores: Stores, b_clock: FakeClock
) -> AsyncIterator[httpx.AsyncClient]:
    """A second control plane on the same store."""
    app = create_app(settings, build_services(settings, stores, monotonic=b_clock))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://cp-b.test") as c:
        yield c


async def _token(client: httpx.AsyncClient, key: str) -> dict[str, str]:
    r = await client.post("/v1/auth/token", json={"api_key": key})
    assert r.status_code == 200, r.text
    return {"Authorization": f"Bearer {r.json()['access_token']}"}


async def _new_key(client: httpx.AsyncClient, admin: dict[str, str], role: str) -> Any:
    r = await client.post(
        "/v1/admin/api-keys", headers=admin, json={"tenant": "acme", "role": role}
    )
    assert r.status_code == 201, r.text
    return r.json()


@pytest.mark.parametrize("store_kind", STORE_KINDS)
async def test_revoked_admin_token_cannot_mint_keys(
    client: httpx.AsyncClient,
    replica_b: httpx.AsyncClient,
    auth_headers: TokenFor,
    store_kind: str,
) -> None:
    root = await auth_headers("admin", "default")
    victim = await _new_key(client, root, "admin")
    token = await _token(client, victim["api_key"])
    # Both replicas accept the token (and replica B remembers the key as live).
    assert (await client.get("/v1/admin/api-keys", headers=token)).status_code == 200
    assert (await replica_b.get("/v1/jobs", headers=token)).status_code == 200

    r = await client.delete(f"/v1/admin/api-keys/{victim['id']}", headers=root)
    assert r.status_code == 200, r.text

    body = {"tenant": "default", "role": "admin"}
    for replica in (client, replica_b):  # admin routes read the store: refused at once
        r = await replica.post("/v1/admin/api-keys", headers=token, json=body)
        assert "revoked" in assert_error(r, 401, "unauthorized")["message"]
    # No key was minted by the revoked token.
    keys = (await client.get("/v1/admin/api-keys", headers=root)).json()["keys"]
    assert len(keys) == 2


async def test_revoked_user_token_cannot_submit(
    client: httpx.AsyncClient,
    replica_b: httpx.AsyncClient,
    auth_headers: TokenFor,
    b_clock: FakeClock,
) -> None:
    root = await auth_headers("admin", "default")
    user = await _new_key(client, root, "user")
    token = await _token(client, user["api_key"])
    bearer_key = {"Authorization": f"Bearer {user['api_key']}"}
    for replica in (client, replica_b):
        assert (await replica.get("/v1/jobs", headers=token)).status_code == 200
        assert (await replica.get("/v1/jobs", headers=bearer_key)).status_code == 200

    assert (await client.delete(f"/v1/admin/api-keys/{user['id']}", headers=root)).is_success
    # The replica that revoked it refuses at once, the token and the key used as a bearer.
    assert_error(await client.post("/v1/jobs", headers=token, json=JOB), 401, "unauthorized")
    assert_error(await client.post("/v1/jobs", headers=bearer_key, json=JOB), 401, "unauthorized")
    # The other replica within revocation_check_s.
    b_clock.advance(CHECK_S + 0.1)
    for headers in (token, bearer_key):
        r = await replica_b.post("/v1/jobs", headers=headers, json=JOB)
        assert_error(r, 401, "unauthorized")
    # Nor can it refresh or exchange again.
    r = await client.post("/v1/auth/token", json={"api_key": user["api_key"]})
    assert_error(r, 401, "unauthorized")


async def test_unrevoked_tokens_keep_working_after_the_check_window(
    client: httpx.AsyncClient,
    replica_b: httpx.AsyncClient,
    auth_headers: TokenFor,
    b_clock: FakeClock,
) -> None:
    """Control: the state check re-reads a live key and lets its token through."""
    headers = await auth_headers("user", "acme")
    assert (await replica_b.get("/v1/jobs", headers=headers)).status_code == 200
    b_clock.advance(CHECK_S + 0.1)
    assert (await replica_b.get("/v1/jobs", headers=headers)).status_code == 200


async def test_rotated_out_api_key_bearer_stops_on_every_replica(
    client: httpx.AsyncClient,
    replica_b: httpx.AsyncClient,
    auth_headers: TokenFor,
    b_clock: FakeClock,
) -> None:
    """An API key used directly as a bearer is remembered for api_key_cache_s (60 s), but a
    rotation that ends the old secret stops it as a revocation would."""
    root = await auth_headers("admin", "default")
    user = await _new_key(client, root, "user")
    old = {"Authorization": f"Bearer {user['api_key']}"}
    for replica in (client, replica_b):
        assert (await replica.get("/v1/jobs", headers=old)).status_code == 200
    r = await client.post(
        f"/v1/admin/api-keys/{user['id']}/rotate", headers=root, json={"old_valid_for_s": 0}
    )
    assert r.status_code == 200, r.text
    new = {"Authorization": f"Bearer {r.json()['api_key']}"}
    assert_error(await client.get("/v1/jobs", headers=old), 401, "unauthorized")
    b_clock.advance(CHECK_S + 0.1)
    assert_error(await replica_b.get("/v1/jobs", headers=old), 401, "unauthorized")
    for replica in (client, replica_b):
        assert (await replica.get("/v1/jobs", headers=new)).status_code == 200


async def test_admin_routes_read_the_store_behind_a_root_path(
    settings: Any,
    stores: Stores,
    b_clock: FakeClock,
    client: httpx.AsyncClient,
    auth_headers: TokenFor,
) -> None:
    """A replica mounted under a prefix (``--root-path /api``) knows its admin routes too:
    a revoked admin token is refused there at once, not after ``revocation_check_s``."""
    app = create_app(settings, build_services(settings, stores, monotonic=b_clock))
    transport = httpx.ASGITransport(app=app, root_path="/api")
    async with httpx.AsyncClient(transport=transport, base_url="http://cp-b.test") as b:
        root = await auth_headers("admin", "default")
        victim = await _new_key(client, root, "admin")
        token = await _token(client, victim["api_key"])
        assert (await b.get("/api/v1/admin/api-keys", headers=token)).status_code == 200
        r = await client.delete(f"/v1/admin/api-keys/{victim['id']}", headers=root)
        assert r.status_code == 200, r.text
        r = await b.get("/api/v1/admin/api-keys", headers=token)
        assert "revoked" in assert_error(r, 401, "unauthorized")["message"]
