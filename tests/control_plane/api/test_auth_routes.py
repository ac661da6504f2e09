"""Auth over HTTP: token exchange, refresh rotation, reuse detection, roles, tenants, admin."""

from __future__ import annotations

import time
from typing import Any

import httpx
import jwt
import pytest

from control_plane.composition import Services
from control_plane.services.tokens import TokenSigner
from control_plane.storage.stores import Stores
from tests.conftest import STORE_KINDS
from tests.control_plane.api.conftest import TokenFor, assert_error


@pytest.fixture
def cache_s() -> int:
    return 60


@pytest.fixture
def settings(settings: Any, cache_s: int) -> Any:
    return settings.model_copy(update={"api_key_cache_s": cache_s})


ADD_SUB_JOB = {
    "model": "add_sub",
    "inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}],
}


async def test_token_exchange_and_claims(
    client: httpx.AsyncClient, api_key: Any, settings: Any
) -> None:
    key = api_key("user", "acme")
    r = await client.post("/v1/auth/token", json={"api_key": key})
    assert r.status_code == 200
    body = r.json()
    assert body["api_version"] == "v1" and body["token_type"] == "Bearer"
    assert body["expires_in"] == settings.access_token_ttl_s
    assert body["refresh_token"].startswith("rt_")
    header = jwt.get_unverified_header(body["access_token"])
    assert header["typ"] == "at+jwt" and header["alg"] == "EdDSA" and header["kid"]
    claims = jwt.decode(body["access_token"], options={"verify_signature": False})
    assert {"iss", "aud", "sub", "tenant", "role", "scopes", "iat", "nbf", "exp", "jti"} <= set(
        claims
    )
    assert claims["tenant"] == "acme" and claims["role"] == "user"
    assert 800 <= claims["exp"] - claims["iat"] <= 1000


async def test_bad_api_keys_rejected(client: httpx.AsyncClient, api_key: Any) -> None:
    good = api_key()
    for bad in [good[:-1] + ("0" if good[-1] != "0" else "1"), "gf_key_nope_secret", "not-a-key!"]:
        assert_error(
            await client.post("/v1/auth/token", json={"api_key": bad}), 401, "unauthorized"
        )


async def test_refresh_rotates_and_reuse_revokes_family(
    client: httpx.AsyncClient, api_key: Any
) -> None:
    first = (await client.post("/v1/auth/token", json={"api_key": api_key()})).json()
    r = await client.post("/v1/auth/refresh", json={"refresh_token": first["refresh_token"]})
    assert r.status_code == 200, r.text
    second = r.json()
    assert second["refresh_token"] != first["refresh_token"]
    ok = await client.get(
        "/v1/runners", headers={"Authorization": f"Bearer {second['access_token']}"}
    )
    assert ok.status_code == 200
    # Reusing the first (already rotated) token revokes the whole family...
    r = await client.post("/v1/auth/refresh", json={"refresh_token": first["refresh_token"]})
    assert_error(r, 401, "unauthorized")
    # ...so the second, never used, no longer works either.
    r = await client.post("/v1/auth/refresh", json={"refresh_token": second["refresh_token"]})
    assert_error(r, 401, "unauthorized")
    # A new login starts a new family.
    fresh = (await client.post("/v1/auth/token", json={"api_key": api_key()})).json()
    r = await client.post("/v1/auth/refresh", json={"refresh_token": fresh["refresh_token"]})
    assert r.status_code == 200


async def test_forged_refresh_token_rejected(client: httpx.AsyncClient, api_key: Any) -> None:
    pair = (await client.post("/v1/auth/token", json={"api_key": api_key()})).json()
    token_id = pair["refresh_token"].split(".")[0]
    for bad in [token_id + ".forgedsecret", "rt_unknown.secret", "garbage-token"]:
        assert_error(
            await client.post("/v1/auth/refresh", json={"refresh_token": bad}), 401, "unauthorized"
        )
    r = await client.post("/v1/auth/refresh", json={"refresh_token": pair["refresh_token"]})
    assert r.status_code == 200  # failed guesses did not burn the real token


async def test_missing_expired_forged_tokens_rejected(
    client: httpx.AsyncClient, services: Services, settings: Any
) -> None:
    assert_error(await client.get("/v1/jobs"), 401, "unauthorized")
    assert_error(
        await client.get("/v1/jobs", headers={"Authorization": "Basic abc"}), 401, "unauthorized"
    )
    key = settings.jwt_secret.get_secret_value()
    old = TokenSigner(
        lambda: key,
        settings.jwt_issuer,
        settings.jwt_audience,
        900,
        lambda: time.time() - 3600,
        keys=services.signing_keys,
    ).issue("key_x", "acme", "admin")
    err = assert_error(
        await client.get("/v1/jobs", headers={"Authorization": f"Bearer {old}"}),
        401,
        "unauthorized",
    )
    assert "expired" in err["message"]
    forged = TokenSigner(lambda: "f" * 64, settings.jwt_issuer, settings.jwt_audience, 900).issue(
        "key_x", "acme", "admin"
    )
    assert_error(
        await client.get("/v1/jobs", headers={"Authorization": f"Bearer {forged}"}),
        401,
        "unauthorized",
    )
    t = int(time.time())
    claims = {
        "iss": settings.jwt_issuer,
        "aud": settings.jwt_audience,
        "sub": "k",
        "tenant": "acme",
        "role": "admin",
        "scopes": ["admin"],
        "iat": t,
        "nbf": t,
        "exp": t + 60,
        "jti": "x",
    }
    hs512 = jwt.encode(claims, key * 2, algorithm="HS512", headers={"typ": "at+jwt"})
    assert_error(
        await client.get("/v1/jobs", headers={"Authorization": f"Bearer {hs512}"}),
        401,
        "unauthorized",
    )


async def test_viewer_cannot_write(client: httpx.AsyncClient, auth_headers: TokenFor) -> None:
    viewer = await auth_headers("viewer")
    assert_error(await client.post("/v1/jobs", json=ADD_SUB_JOB, headers=viewer), 403, "forbidden")
    r = await client.post(
        "/v1/models/m1/versions",
        headers=viewer,
        json={"files": [{"path": "config.pbtxt", "size": 1, "sha256": "0" * 64}]},
    )
    assert_error(r, 403, "forbidden")
    assert (await client.get("/v1/jobs", headers=viewer)).status_code == 200
    assert (await client.get("/v1/runners", headers=viewer)).status_code == 200


async def test_non_admin_cannot_use_admin_routes(
    client: httpx.AsyncClient, auth_headers: TokenFor
) -> None:
    user = await auth_headers("user")
    r = await client.post(
        "/v1/admin/api-keys", headers=user, json={"tenant": "acme", "role": "admin"}
    )
    assert_error(r, 403, "forbidden")
    assert_error(
        await client.post("/v1/admin/join-tokens", headers=user, json={}), 403, "forbidden"
    )
    assert_error(await client.delete("/v1/admin/api-keys/key_x", headers=user), 403, "forbidden")
    assert_error(
        await client.patch("/v1/runners/run_x/config", headers=user, json={"drain": True}),
        403,
        "forbidden",
    )


async def test_admin_creates_and_revokes_keys(
    client: httpx.AsyncClient, auth_headers: TokenFor
) -> None:
    admin = await auth_headers("admin", "default")
    r = await client.post(
        "/v1/admin/api-keys", headers=admin, json={"tenant": "beta", "role": "viewer", "name": "ci"}
    )
    assert r.status_code == 201, r.text
    created = r.json()
    assert created["id"].startswith("key_") and created["api_key"].startswith(
        "gf_" + created["id"] + "_"
    )
    pair = (await client.post("/v1/auth/token", json={"api_key": created["api_key"]})).json()
    claims = jwt.decode(pair["access_token"], options={"verify_signature": False})
    assert (claims["tenant"], claims["role"]) == ("beta", "viewer")

    r = await client.delete(f"/v1/admin/api-keys/{created['id']}", headers=admin)
    assert r.status_code == 200 and r.json() == {
        "api_version": "v1",
        "id": created["id"],
        "revoked": True,
    }
    # The key no longer logs in; its refresh token stops working at the next refresh.
    assert_error(
        await client.post("/v1/auth/token", json={"api_key": created["api_key"]}),
        401,
        "unauthorized",
    )
    assert_error(
        await client.post("/v1/auth/refresh", json={"refresh_token": pair["refresh_token"]}),
        401,
        "unauthorized",
    )
    assert_error(
        await client.delete("/v1/admin/api-keys/key_missing", headers=admin), 404, "not_found"
    )


async def test_admin_join_token(client: httpx.AsyncClient, auth_headers: TokenFor) -> None:
    admin = await auth_headers("admin", "default")
    r = await client.post(
        "/v1/admin/join-tokens",
        headers=admin,
        json={"region": "eu-west-1", "labels": {"gpu": "a100"}, "expires_in_s": 600},
    )
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["join_token"].startswith("gfj_") and body["expires_at"].endswith("Z")
    r = await client.post(
        "/v1/runners/register", json={"join_token": body["join_token"], "name": "h1"}
    )
    assert r.status_code == 201, r.text
    runners = (await client.get("/v1/runners", headers=admin)).json()["runners"]
    assert [(x["region"], x["labels"]) for x in runners] == [("eu-west-1", {"gpu": "a100"})]


async def test_jwks_verifies_access_tokens(
    client: httpx.AsyncClient, api_key: Any, settings: Any
) -> None:
    """The token's kid is in the JWKS and its public key verifies the token (offline)."""
    r = await client.post("/v1/auth/token", json={"api_key": api_key()})
    token = r.json()["access_token"]
    keys = (await client.get("/v1/auth/jwks")).json()["keys"]
    kid = jwt.get_unverified_header(token)["kid"]
    jwk = next(k for k in keys if k["kid"] == kid)
    assert jwk["alg"] == "EdDSA" and jwk["kty"] == "OKP" and "d" not in jwk
    claims = jwt.decode(
        token,
        jwt.PyJWK(jwk).key,
        algorithms=["EdDSA"],
        audience=settings.jwt_audience,
        issuer=settings.jwt_issuer,
    )
    assert claims["tenant"] == "acme"


async def test_hs256_stays_possible(settings: Any, stores: Stores) -> None:
    """access_token_algorithm HS256: a single shared secret signs access tokens."""
    from control_plane.app import create_app
    from control_plane.composition import build_services

    s = settings.model_copy(update={"access_token_algorithm": "HS256"})
    app = create_app(s, build_services(s, stores))
    key = app.state.services.auth.issue_api_key("acme", "user", "k").api_key
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://a") as c:
        tok = (await c.post("/v1/auth/token", json={"api_key": key})).json()["access_token"]
        assert jwt.get_unverified_header(tok)["alg"] == "HS256"
        secret = s.jwt_secret.get_secret_value() if s.jwt_secret else None
        assert secret is None or jwt.decode(
            tok, secret, algorithms=["HS256"], audience=s.jwt_audience
        )
        r = await c.get("/v1/jobs", headers={"Authorization": f"Bearer {tok}"})
        assert r.status_code == 200, r.text


@pytest.mark.parametrize("store_kind", STORE_KINDS)
async def test_generated_signing_key_is_shared(settings: Any, stores: Stores) -> None:
    """Without jwt_secret, replicas share one generated key through the auth store."""
    from control_plane.app import create_app
    from control_plane.composition import build_services

    s = settings.model_copy(update={"jwt_secret": None})
    a, b = create_app(s, build_services(s, stores)), create_app(s, build_services(s, stores))
    key = a.state.services.auth.issue_api_key("acme", "user", "k").api_key
    async with (
        httpx.AsyncClient(transport=httpx.ASGITransport(app=a), base_url="http://a") as ca,
        httpx.AsyncClient(transport=httpx.ASGITransport(app=b), base_url="http://b") as cb,
    ):
        tok = (await ca.post("/v1/auth/token", json={"api_key": key})).json()["access_token"]
        r = await cb.get("/v1/runners", headers={"Authorization": f"Bearer {tok}"})
        assert r.status_code == 200, r.text


async def test_api_key_works_directly_as_a_bearer_token(
    client: httpx.AsyncClient, api_key: Any, auth_headers: TokenFor
) -> None:
    """``Authorization: Bearer gf_…`` (curl, tritonclient): checked, then remembered for
    ``api_key_cache_s``; roles and tenants as with an access token."""
    viewer = api_key("viewer", "acme")
    r = await client.get("/v1/jobs", headers={"Authorization": f"Bearer {viewer}"})
    assert r.status_code == 200, r.text
    r = await client.post(
        "/v1/jobs", headers={"Authorization": f"Bearer {viewer}"}, json=ADD_SUB_JOB
    )
    assert_error(r, 403, "forbidden")
    bad = viewer[:-1] + ("0" if viewer[-1] != "0" else "1")
    err = assert_error(
        await client.get("/v1/jobs", headers={"Authorization": f"Bearer {bad}"}),
        401,
        "unauthorized",
    )
    assert "invalid api key" in str(err)

    admin = await auth_headers("admin", "default")
    created = (
        await client.post(
            "/v1/admin/api-keys", headers=admin, json={"tenant": "beta", "role": "user"}
        )
    ).json()
    key = {"Authorization": f"Bearer {created['api_key']}"}
    assert (await client.get("/v1/jobs", headers=key)).status_code == 200
    await client.delete(f"/v1/admin/api-keys/{created['id']}", headers=admin)
    # revoked on this replica: refused at once although the key is remembered (other
    # replicas: within revocation_check_s, tests/security/test_revocation.py)
    assert_error(await client.get("/v1/jobs", headers=key), 401, "unauthorized")


@pytest.mark.parametrize("cache_s", [0])
async def test_api_key_bearer_without_cache_sees_revocation_at_once(
    client: httpx.AsyncClient, auth_headers: TokenFor, cache_s: int
) -> None:
    admin = await auth_headers("admin", "default")
    created = (
        await client.post("/v1/admin/api-keys", headers=admin, json={"tenant": "b", "role": "user"})
    ).json()
    key = {"Authorization": f"Bearer {created['api_key']}"}
    assert (await client.get("/v1/jobs", headers=key)).status_code == 200
    await client.delete(f"/v1/admin/api-keys/{created['id']}", headers=admin)
    assert_error(await client.get("/v1/jobs", headers=key), 401, "unauthorized")


@pytest.mark.parametrize("store_kind", STORE_KINDS)
async def test_admin_lists_api_keys_without_secrets(
    client: httpx.AsyncClient, auth_headers: TokenFor
) -> None:
    admin = await auth_headers("admin", "default")
    created = (
        await client.post(
            "/v1/admin/api-keys", headers=admin, json={"tenant": "beta", "role": "viewer"}
        )
    ).json()
    await client.delete(f"/v1/admin/api-keys/{created['id']}", headers=admin)
    r = await client.get("/v1/admin/api-keys", headers=admin)
    assert r.status_code == 200, r.text
    keys = {k["id"]: k for k in r.json()["keys"]}
    assert keys[created["id"]]["revoked"] is True and keys[created["id"]]["tenant"] == "beta"
    assert created["api_key"] not in r.text and "secret" not in r.text
    user = await auth_headers("user", "acme")
    assert_error(await client.get("/v1/admin/api-keys", headers=user), 403, "forbidden")


@pytest.mark.parametrize("store_kind", STORE_KINDS)
async def test_admin_lists_and_revokes_join_tokens(
    client: httpx.AsyncClient, auth_headers: TokenFor
) -> None:
    admin = await auth_headers("admin", "default")
    made = (await client.post("/v1/admin/join-tokens", headers=admin, json={"region": "eu"})).json()
    assert made["id"].startswith("jt_")
    listed = (await client.get("/v1/admin/join-tokens", headers=admin)).json()["tokens"]
    assert [(t["id"], t["region"]) for t in listed] == [(made["id"], "eu")]
    assert made["join_token"] not in str(listed)
    r = await client.delete(f"/v1/admin/join-tokens/{made['id']}", headers=admin)
    assert r.status_code == 200 and r.json()["id"] == made["id"]
    assert (await client.get("/v1/admin/join-tokens", headers=admin)).json()["tokens"] == []
    # a revoked token registers no runner
    reg = await client.post(
        "/v1/runners/register", json={"join_token": made["join_token"], "name": "h"}
    )
    assert_error(reg, 401, "unauthorized")
    missing = await client.delete(f"/v1/admin/join-tokens/{made['id']}", headers=admin)
    assert_error(missing, 404, "not_found")
