"""Runner routes over HTTP: registration, signed calls (and their rejections), fleet admin."""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import pytest
from gpufleet import signing

from control_plane.composition import Services
from tests.control_plane.api.conftest import TokenFor, assert_error

GPU = {
    "index": 0,
    "uuid": "GPU-1",
    "name": "A100",
    "memory_total_mb": 40960,
    "memory_used_mb": 1024,
    "utilization_pct": 37.5,
}


async def _join(client: httpx.AsyncClient, admin: dict[str, str], **body: Any) -> str:
    r = await client.post("/v1/admin/join-tokens", headers=admin, json=body)
    assert r.status_code == 201, r.text
    return str(r.json()["join_token"])


@pytest.fixture
async def runner(client: httpx.AsyncClient, auth_headers: TokenFor) -> dict[str, str]:
    admin = await auth_headers("admin", "default")
    token = await _join(client, admin, region="eu-west-1")
    r = await client.post(
        "/v1/runners/register", json={"join_token": token, "name": "h1", "gpus": [GPU]}
    )
    assert r.status_code == 201, r.text
    return {
        "id": r.json()["runner_id"],
        "secret": r.json()["secret"],
        "admin": admin["Authorization"],
    }


async def signed(
    client: httpx.AsyncClient,
    runner: dict[str, str],
    action: str,
    body: dict[str, Any],
    **sign_kw: Any,
) -> httpx.Response:
    path = f"/v1/runners/{runner['id']}/{action}"
    raw = json.dumps(body).encode()
    h = signing.sign_headers(runner["id"], runner["secret"], "POST", path, body=raw, **sign_kw)
    return await client.post(path, content=raw, headers={**h, "Content-Type": "application/json"})


async def _last_heartbeat(client: httpx.AsyncClient, runner: dict[str, str]) -> Any:
    r = await client.get("/v1/runners", headers={"Authorization": runner["admin"]})
    (view,) = [x for x in r.json()["runners"] if x["id"] == runner["id"]]
    return view


async def test_register_needs_valid_join_token(
    client: httpx.AsyncClient, auth_headers: TokenFor, services: Services
) -> None:
    r = await client.post(
        "/v1/runners/register", json={"join_token": "gfj_forgedtoken", "name": "h"}
    )
    assert_error(r, 401, "unauthorized")
    assert services.runners.records() == []


async def test_heartbeat_stores_state_and_answers_config(
    client: httpx.AsyncClient, runner: dict[str, str]
) -> None:
    assert (await _last_heartbeat(client, runner))["status"] == "OFFLINE"
    hb = {
        "gpus": [GPU],
        "models": [{"name": "add_sub", "version": "1", "state": "READY"}],
        "triton": {"models": {"add_sub": {"success": 5, "failure": 1}}},
        "running_jobs": [],
    }
    r = await signed(client, runner, "heartbeat", hb)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["config"]["max_concurrency"] == 8 and body["desired_models"] is None
    assert body["cancel_jobs"] == []
    view = await _last_heartbeat(client, runner)
    assert view["status"] == "ONLINE" and view["models"][0]["state"] == "READY"
    assert view["gpus"][0]["utilization_pct"] == 37.5


async def test_bad_signed_calls_are_401_and_store_nothing(
    client: httpx.AsyncClient, runner: dict[str, str], settings: Any
) -> None:
    path = f"/v1/runners/{runner['id']}/heartbeat"
    assert_error(await client.post(path, json={}), 401, "unauthorized")  # unsigned
    bad = {**runner, "secret": "wrong-secret"}
    assert_error(await signed(client, bad, "heartbeat", {}), 401, "unauthorized")
    stale = time.time() - settings.runner_signature_window_s - 5
    assert_error(await signed(client, runner, "heartbeat", {}, now=stale), 401, "unauthorized")
    # Signed for another runner's path.
    raw = b"{}"
    h = signing.sign_headers(
        runner["id"], runner["secret"], "POST", "/v1/runners/run_other/heartbeat", body=raw
    )
    assert_error(
        await client.post("/v1/runners/run_other/heartbeat", content=raw, headers=h),
        401,
        "unauthorized",
    )
    assert (await _last_heartbeat(client, runner))["last_heartbeat_at"] is None
    # A replayed nonce: the first call works, the same headers again are refused.
    nonce = "n" * 20
    assert (await signed(client, runner, "heartbeat", {}, nonce=nonce)).status_code == 200
    assert_error(await signed(client, runner, "heartbeat", {}, nonce=nonce), 401, "unauthorized")


async def test_signed_but_invalid_body_is_422(
    client: httpx.AsyncClient, runner: dict[str, str]
) -> None:
    r = await signed(client, runner, "heartbeat", {"gpus": "many"})
    assert_error(r, 422, "invalid_request")
    r = await signed(client, runner, "heartbeat", {"api_version": "v2"})
    assert_error(r, 422, "invalid_request")
    assert (await _last_heartbeat(client, runner))["last_heartbeat_at"] is None


async def test_revoked_runner_is_401(client: httpx.AsyncClient, runner: dict[str, str]) -> None:
    admin = {"Authorization": runner["admin"]}
    r = await client.delete(f"/v1/runners/{runner['id']}", headers=admin)
    assert r.status_code == 200 and r.json()["revoked"] is True
    assert_error(await signed(client, runner, "heartbeat", {}), 401, "unauthorized")
    assert_error(await signed(client, runner, "lease", {"models": []}), 401, "unauthorized")
    view = await _last_heartbeat(client, runner)
    assert view["status"] == "REVOKED" and view["last_heartbeat_at"] is None
    assert_error(await client.delete("/v1/runners/run_missing", headers=admin), 404, "not_found")


async def test_config_patch_merges_and_drains(
    client: httpx.AsyncClient, runner: dict[str, str]
) -> None:
    admin = {"Authorization": runner["admin"]}
    path = f"/v1/runners/{runner['id']}/config"
    r = await client.patch(path, headers=admin, json={"max_concurrency": 2})
    assert r.status_code == 200, r.text
    r = await client.patch(path, headers=admin, json={"drain": True, "acceptance_rate": 0.5})
    cfg = r.json()["config"]
    assert (cfg["max_concurrency"], cfg["drain"], cfg["acceptance_rate"]) == (2, True, 0.5)
    assert_error(
        await client.patch(path, headers=admin, json={"max_concurrency": 0}), 422, "invalid_request"
    )
    assert_error(
        await client.patch(path, headers=admin, json={"color": "red"}), 422, "invalid_request"
    )
    hb = (await signed(client, runner, "heartbeat", {})).json()
    assert hb["config"]["drain"] is True and hb["config"]["max_concurrency"] == 2
    assert (await _last_heartbeat(client, runner))["status"] == "DRAINING"
    lease = await signed(
        client, runner, "lease", {"models": [{"name": "m", "version": "1"}], "wait_s": 5}
    )
    assert lease.status_code == 200 and lease.json()["jobs"] == []
    assert_error(
        await client.patch("/v1/runners/run_missing/config", headers=admin, json={"drain": False}),
        404,
        "not_found",
    )
