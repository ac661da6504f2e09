"""``POST /v1/runners/join-tokens/check``: whether a join token would register a runner now,
without using it (``gpufleet-runner configure`` asks before it writes a config)."""

from __future__ import annotations

import httpx

from tests.control_plane.api.conftest import TokenFor, assert_error
from tests.control_plane.api.test_runner_routes import _join

CHECK = "/v1/runners/join-tokens/check"


async def test_a_good_token_is_accepted_and_not_used(
    client: httpx.AsyncClient, auth_headers: TokenFor
) -> None:
    admin = await auth_headers("admin", "default")
    token = await _join(client, admin, region="eu-west-1", max_uses=1)
    for _ in range(3):  # asking uses nothing
        r = await client.post(CHECK, json={"join_token": token})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["region"] == "eu-west-1" and body["uses_left"] == 1, body
        assert body["id"].startswith("jt_") and body["expires_at"], body
    listed = (await client.get("/v1/admin/join-tokens", headers=admin)).json()["tokens"]
    assert [t["uses"] for t in listed if t["id"] == body["id"]] == [0]

    r = await client.post("/v1/runners/register", json={"join_token": token, "name": "h1"})
    assert r.status_code == 201, r.text
    r = await client.post(CHECK, json={"join_token": token})
    assert_error(r, 401, "unauthorized")
    assert "used up" in r.json()["error"]["message"], r.text


async def test_unknown_revoked_and_expired_tokens_are_refused(
    client: httpx.AsyncClient, auth_headers: TokenFor
) -> None:
    r = await client.post(CHECK, json={"join_token": "gfj_forgedtoken"})
    assert_error(r, 401, "unauthorized")
    assert "invalid or expired join token" in r.json()["error"]["message"]

    admin = await auth_headers("admin", "default")
    token = await _join(client, admin)
    token_id = (await client.post(CHECK, json={"join_token": token})).json()["id"]
    r = await client.delete(f"/v1/admin/join-tokens/{token_id}", headers=admin)
    assert r.status_code in (200, 204), r.text
    assert_error(await client.post(CHECK, json={"join_token": token}), 401, "unauthorized")


async def test_bad_body_names_the_field(client: httpx.AsyncClient) -> None:
    r = await client.post(CHECK, json={"token": "gfj_x"})
    assert r.status_code == 422, r.text
    assert "join_token" in r.text
