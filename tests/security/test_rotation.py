"""Item 13: API keys rotate (new secret, the old one valid until a chosen time); runner HMAC
secrets rotate on a schedule from the control plane (delivered in a heartbeat answer,
confirmed by the runner signing with it, the old one valid for an overlap window)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from control_plane.api.context import Services
from control_plane.composition import build_services
from control_plane.storage.stores import Stores
from tests.conftest import STORE_KINDS
from tests.control_plane.api.conftest import TokenFor, assert_error
from tests.control_plane.api.helpers import signed_post
from tests.helpers.clock import FakeClock

ROTATION_S = 1
OVERLAP_S = 2


@pytest.fixture
def settings(settings: Any) -> Any:
    return settings.model_copy(
        update={
            "runner_secret_rotation_s": ROTATION_S,
            "runner_secret_overlap_s": OVERLAP_S,
            "api_key_cache_s": 0,
        }
    )


@pytest.fixture
def now() -> FakeClock:
    """The control plane's clock in this file: moved by the tests, never slept through."""
    return FakeClock()


@pytest.fixture
def services(settings: Any, stores: Stores, now: FakeClock) -> Services:
    return build_services(settings, stores, now=now)


async def _exchange(client: httpx.AsyncClient, key: str) -> httpx.Response:
    return await client.post("/v1/auth/token", json={"api_key": key})


@pytest.mark.parametrize("store_kind", STORE_KINDS)
async def test_api_key_rotation_keeps_the_old_secret_until_the_chosen_time(
    client: httpx.AsyncClient, auth_headers: TokenFor, store_kind: str, now: FakeClock
) -> None:
    admin = await auth_headers("admin", "default")
    made = (
        await client.post(
            "/v1/admin/api-keys", headers=admin, json={"tenant": "acme", "role": "user"}
        )
    ).json()
    old = made["api_key"]
    r = await client.post(
        f"/v1/admin/api-keys/{made['id']}/rotate", headers=admin, json={"old_valid_for_s": 1}
    )
    assert r.status_code == 200, r.text
    new = r.json()["api_key"]
    assert new != old and new.startswith(f"gf_{made['id']}_") and r.json()["old_valid_until"]
    assert (await _exchange(client, new)).status_code == 200
    assert (await _exchange(client, old)).status_code == 200  # still within its time
    listed = (await client.get("/v1/admin/api-keys", headers=admin)).json()["keys"]
    assert [k["previous_valid_until"] for k in listed if k["id"] == made["id"]] != [None]
    now.advance(1.2)
    assert_error(await _exchange(client, old), 401, "unauthorized")
    assert (await _exchange(client, new)).status_code == 200


async def test_a_key_rotates_itself_but_not_others(
    client: httpx.AsyncClient, api_key: Any, services: Any
) -> None:
    mine = services.auth.issue_api_key("acme", "user", "ci")
    other = services.auth.issue_api_key("acme", "user", "other")
    headers = {"Authorization": f"Bearer {mine.api_key}"}
    r = await client.post(
        f"/v1/admin/api-keys/{mine.id}/rotate", headers=headers, json={"old_valid_for_s": 0}
    )
    assert r.status_code == 200, r.text
    assert_error(await _exchange(client, mine.api_key), 401, "unauthorized")  # 0: at once
    assert (await _exchange(client, r.json()["api_key"])).status_code == 200
    new_headers = {"Authorization": f"Bearer {r.json()['api_key']}"}
    r = await client.post(f"/v1/admin/api-keys/{other.id}/rotate", headers=new_headers, json={})
    assert_error(r, 403, "forbidden")


# ---------------------------------------------------------------------- runner secrets
async def _runner(client: httpx.AsyncClient, admin: dict[str, str]) -> tuple[str, str]:
    token = (await client.post("/v1/admin/join-tokens", headers=admin, json={})).json()
    r = await client.post(
        "/v1/runners/register", json={"join_token": token["join_token"], "name": "gpu-1"}
    )
    assert r.status_code == 201, r.text
    return r.json()["runner_id"], r.json()["secret"]


def _beat(runner_id: str) -> tuple[str, dict[str, Any]]:
    return f"/v1/runners/{runner_id}/heartbeat", {"running_jobs": []}


@pytest.mark.parametrize("store_kind", STORE_KINDS)
async def test_runner_secret_rotates_on_schedule_with_overlap(
    client: httpx.AsyncClient, auth_headers: TokenFor, store_kind: str, now: FakeClock
) -> None:
    admin = await auth_headers("admin", "default")
    runner_id, old = await _runner(client, admin)
    path, body = _beat(runner_id)
    r = await signed_post(client, runner_id, old, path, body)
    assert r.status_code == 200 and r.json()["new_secret"] is None  # young secret

    now.advance(ROTATION_S + 0.1)
    r = await signed_post(client, runner_id, old, path, body)
    new = r.json()["new_secret"]
    assert new and new != old
    # Not confirmed yet: offered again (the same one), and the old secret still works.
    r = await signed_post(client, runner_id, old, path, body)
    assert r.json()["new_secret"] == new
    view = (await client.get("/v1/runners", headers=admin)).json()["runners"][0]
    assert view["secret_rotation_pending"] is True

    # The runner signs with the new secret: that confirms the rotation.
    r = await signed_post(client, runner_id, new, path, body)
    assert r.status_code == 200 and r.json()["new_secret"] is None
    view = (await client.get("/v1/runners", headers=admin)).json()["runners"][0]
    assert view["secret_rotation_pending"] is False
    # The old secret works for the overlap window (calls in flight), then never again.
    assert (await signed_post(client, runner_id, old, path, body)).status_code == 200
    now.advance(OVERLAP_S + 0.1)
    r = await signed_post(client, runner_id, old, path, body)
    assert_error(r, 401, "unauthorized")
    # A secret nobody issued never works.
    assert_error(await signed_post(client, runner_id, "forged", path, body), 401, "unauthorized")


async def test_admin_rotates_a_runner_secret_on_demand(
    client: httpx.AsyncClient, auth_headers: TokenFor, settings: Any
) -> None:
    admin = await auth_headers("admin", "default")
    runner_id, old = await _runner(client, admin)
    user = await auth_headers("user", "acme")
    r = await client.post(f"/v1/runners/{runner_id}/rotate-secret", headers=user)
    assert_error(r, 403, "forbidden")
    r = await client.post(f"/v1/runners/{runner_id}/rotate-secret", headers=admin)
    assert r.status_code == 200 and r.json()["secret_rotation_pending"] is True
    path, body = _beat(runner_id)
    new = (await signed_post(client, runner_id, old, path, body)).json()["new_secret"]
    assert new and new != old
    assert (await signed_post(client, runner_id, new, path, body)).status_code == 200
    r = await client.post("/v1/runners/run_nope/rotate-secret", headers=admin)
    assert_error(r, 404, "not_found")
