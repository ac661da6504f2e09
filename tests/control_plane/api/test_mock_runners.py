"""Mock runners (made-up answers) get no work from a fleet unless an admin allows them
(``GPUFLEET_ALLOW_MOCK_RUNNERS``): their leases are refused with 403 saying so, and the
dispatch channel routes them nothing; ``runners list`` shows their backend."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.control_plane.api.conftest import TokenFor, assert_error
from tests.control_plane.api.helpers import add_sub_job, push_model, signed_post

LEASE = {"models": [{"name": "add_sub", "version": "1"}], "max_jobs": 1}


@pytest.fixture
def allow_mock() -> bool:
    return False


@pytest.fixture
def settings(settings: Any, allow_mock: bool) -> Any:
    return settings.model_copy(update={"allow_mock_runners": allow_mock})


async def register(
    client: httpx.AsyncClient, admin: dict[str, str], labels: dict[str, str]
) -> dict[str, str]:
    r = await client.post("/v1/admin/join-tokens", headers=admin, json={})
    token = r.json()["join_token"]
    body = {"join_token": token, "name": "m1", "labels": labels}
    r = await client.post("/v1/runners/register", json=body)
    assert r.status_code == 201, r.text
    return {"id": r.json()["runner_id"], "secret": r.json()["secret"]}


async def lease(client: httpx.AsyncClient, runner: dict[str, str]) -> httpx.Response:
    path = f"/v1/runners/{runner['id']}/lease"
    return await signed_post(client, runner["id"], runner["secret"], path, LEASE)


async def test_a_mock_runner_gets_no_jobs_unless_allowed(
    client: httpx.AsyncClient, auth_headers: TokenFor
) -> None:
    admin = await auth_headers("admin", "default")
    user = await auth_headers("user", "acme")
    await push_model(client, user)
    job = (await client.post("/v1/jobs", headers=user, json=add_sub_job())).json()

    mock = await register(client, admin, {"gpufleet.backend": "mock"})
    err = assert_error(await lease(client, mock), 403, "forbidden")
    assert "mock backend" in err["message"] and "GPUFLEET_ALLOW_MOCK_RUNNERS" in err["message"]

    # a runner that says so only in its heartbeat is refused too
    hb_mock = await register(client, admin, {})
    path = f"/v1/runners/{hb_mock['id']}/heartbeat"
    r = await signed_post(
        client, hb_mock["id"], hb_mock["secret"], path, {"triton": {"backend": "mock"}}
    )
    assert r.status_code == 200, r.text
    assert_error(await lease(client, hb_mock), 403, "forbidden")
    listed = (await client.get("/v1/runners", headers=admin)).json()["runners"]
    assert {r["id"]: r["triton"].get("backend") for r in listed}[hb_mock["id"]] == "mock"

    real = await register(client, admin, {})
    ready = {"models": [{"name": "add_sub", "version": "1", "state": "READY"}]}
    path = f"/v1/runners/{real['id']}/heartbeat"
    assert (await signed_post(client, real["id"], real["secret"], path, ready)).status_code == 200
    r = await lease(client, real)
    assert r.status_code == 200 and [j["id"] for j in r.json()["jobs"]] == [job["id"]]


@pytest.mark.parametrize("allow_mock", [True])
async def test_an_admin_may_allow_mock_runners(
    client: httpx.AsyncClient, auth_headers: TokenFor
) -> None:
    admin = await auth_headers("admin", "default")
    user = await auth_headers("user", "acme")
    await push_model(client, user)
    job = (await client.post("/v1/jobs", headers=user, json=add_sub_job())).json()
    mock = await register(client, admin, {"gpufleet.backend": "mock"})
    r = await lease(client, mock)
    assert r.status_code == 200 and [j["id"] for j in r.json()["jobs"]] == [job["id"]]
