"""Direct-mode tickets and the signing-key admin routes in process: runner choice (direct
URL, model READY, online, region preference), refusals (role, tenant, body), the ticket's
claims checked with the JWKS, rotation by an admin."""

from __future__ import annotations

from typing import Any

import httpx
import jwt
import pytest

from control_plane.composition import Services
from tests.control_plane.api.conftest import TokenFor, assert_error
from tests.control_plane.api.helpers import push_model, signed_post


async def _runner(
    client: httpx.AsyncClient,
    admin: dict[str, str],
    region: str,
    direct_url: str | None,
    state: str = "READY",
) -> str:
    r = await client.post("/v1/admin/join-tokens", headers=admin, json={"region": region})
    assert r.status_code == 201, r.text
    body = {"join_token": r.json()["join_token"], "name": f"r-{region}"}
    r = await client.post("/v1/runners/register", json=body)
    assert r.status_code == 201, r.text
    runner_id, secret = r.json()["runner_id"], r.json()["secret"]
    triton: dict[str, Any] = {"ready": True}
    if direct_url is not None:
        triton["direct_url"] = direct_url
    beat = {"models": [{"name": "add_sub", "version": "1", "state": state}], "triton": triton}
    r = await signed_post(client, runner_id, secret, f"/v1/runners/{runner_id}/heartbeat", beat)
    assert r.status_code == 200, r.text
    return str(runner_id)


async def test_ticket_picks_a_direct_runner_and_verifies_with_jwks(
    client: httpx.AsyncClient, auth_headers: TokenFor, settings: Any
) -> None:
    user = await auth_headers("user", "acme")
    admin = await auth_headers("admin", "ops")
    await push_model(client, user)
    r = await client.post("/v1/models/add_sub/direct", headers=user, json={})
    assert_error(r, 503, "unavailable")  # no runner offers direct mode yet

    await _runner(client, admin, "eu-west-1", None)  # serves it, no direct mode
    await _runner(client, admin, "eu-west-1", "http://loading.example:8010", state="LOADING")
    eu = await _runner(client, admin, "eu-west-1", "http://eu.example:8010/")
    us = await _runner(client, admin, "us-east-1", "http://us.example:8010")
    seen = set()
    for _ in range(12):
        r = await client.post("/v1/models/add_sub/direct", headers=user, content=b"")
        assert r.status_code == 200, r.text
        seen.add(r.json()["runner_id"])
    assert seen <= {eu, us}
    for region, want, url in (
        ("us-east-1", us, "http://us.example:8010"),
        ("eu-west-1", eu, "http://eu.example:8010"),
    ):
        r = await client.post("/v1/models/add_sub/direct", headers=user, json={"region": region})
        body = r.json()
        assert body["runner_id"] == want and body["url"] == url and body["region"] == region
    r = await client.post("/v1/models/add_sub/direct", headers=user, json={"region": "mars-1"})
    assert r.json()["runner_id"] in (eu, us)  # a preference, not a limit

    keys = (await client.get("/v1/auth/jwks")).json()["keys"]
    header = jwt.get_unverified_header(body["ticket"])
    assert header["typ"] == "gf-ticket+jwt"
    jwk = next(k for k in keys if k["kid"] == header["kid"])
    claims = jwt.decode(
        body["ticket"],
        jwt.PyJWK(jwk).key,
        algorithms=[jwk["alg"]],
        audience=f"runner:{eu}",
        issuer=settings.jwt_issuer,
    )
    assert claims["tenant"] == "acme" and claims["model"] == "add_sub"
    assert claims["version"] == "1" and 0 < claims["exp"] - claims["iat"] <= 300


async def test_ticket_refusals(client: httpx.AsyncClient, auth_headers: TokenFor) -> None:
    user = await auth_headers("user", "acme")
    await push_model(client, user)
    viewer = await auth_headers("viewer", "acme")
    other = await auth_headers("user", "globex")
    path = "/v1/models/add_sub/direct"
    assert_error(await client.post(path, json={}), 401, "unauthorized")
    assert_error(await client.post(path, headers=viewer, json={}), 403, "forbidden")
    assert_error(await client.post(path, headers=other, json={}), 404, "model_not_found")
    r = await client.post("/v1/models/nope/direct", headers=user, json={})
    assert r.status_code == 404, r.text
    err = assert_error(
        await client.post(path, headers=user, json={"vers": "1"}), 422, "invalid_request"
    )
    assert "vers" in str(err)
    err = assert_error(
        await client.post(path, headers=user, json={"version": "x"}), 422, "invalid_request"
    )
    assert "version" in str(err)
    r = await client.post(path, headers=user, json={"version": "7"})
    assert r.status_code == 404, r.text


async def test_signing_key_admin_routes(
    client: httpx.AsyncClient, auth_headers: TokenFor, services: Services
) -> None:
    admin = await auth_headers("admin", "ops")
    user = await auth_headers("user", "acme")
    for method, path in (
        ("GET", "/v1/admin/signing-keys"),
        ("POST", "/v1/admin/signing-keys/rotate"),
    ):
        assert_error(await client.request(method, path, headers=user), 403, "forbidden")
    before = (await client.get("/v1/admin/signing-keys", headers=admin)).json()["keys"]
    assert len(before) == 1 and before[0]["current"] and before[0]["alg"] == "EdDSA"
    assert "private_pem" not in before[0]
    r = await client.post("/v1/admin/signing-keys/rotate", headers=admin)
    assert r.status_code == 200, r.text
    after = r.json()["keys"]
    assert [k["current"] for k in after] == [True, False]
    assert after[1]["kid"] == before[0]["kid"] and after[1]["verifies_until"]
    # the access token signed by the rotated-out key still works (overlap window)
    assert (await client.get("/v1/admin/signing-keys", headers=admin)).status_code == 200
    jwks = (await client.get("/v1/auth/jwks")).json()["keys"]
    assert [k["kid"] for k in jwks] == [k["kid"] for k in after]
    fresh = await auth_headers("admin", "ops")
    kid = jwt.get_unverified_header(fresh["Authorization"].split()[1])["kid"]
    assert kid == after[0]["kid"]


@pytest.mark.parametrize("alg", ["ES256"])
async def test_es256_keys(settings: Any, stores: Any, alg: str) -> None:
    from control_plane.app import create_app
    from control_plane.composition import build_services

    s = settings.model_copy(update={"access_token_algorithm": alg})
    app = create_app(s, build_services(s, stores))
    key = app.state.services.auth.issue_api_key("acme", "user", "k").api_key
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://a") as c:
        tok = (await c.post("/v1/auth/token", json={"api_key": key})).json()["access_token"]
        assert jwt.get_unverified_header(tok)["alg"] == "ES256"
        jwk = (await c.get("/v1/auth/jwks")).json()["keys"][0]
        assert jwk["kty"] == "EC" and jwk["crv"] == "P-256" and "d" not in jwk
        assert (
            await c.get("/v1/jobs", headers={"Authorization": f"Bearer {tok}"})
        ).status_code == 200
