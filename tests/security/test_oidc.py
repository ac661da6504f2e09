"""Item 12: tokens of an external OpenID issuer, verified against its JWKS (a real HTTP
server on 127.0.0.1 here), mapped to tenant and role through configured claims; key
rotation, a wrong audience, a foreign issuer and algorithm confusion."""

from __future__ import annotations

import http.server
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from tests.control_plane.api.conftest import assert_error

ISSUER = "https://idp.example.test/realms/acme"
AUDIENCE = "gpufleet-api"


class Issuer:
    """A tiny OpenID issuer: signing keys by kid, and a JWKS endpoint serving the public
    halves of the keys it currently publishes."""

    def __init__(self) -> None:
        self.keys: dict[str, Any] = {}
        self.published: list[str] = []
        self.fetches = 0
        issuer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                issuer.fetches += 1
                body = json.dumps({"keys": [issuer.jwk(k) for k in issuer.published]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/certs"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def add_key(self, kid: str, alg: str = "RS256") -> None:
        if alg == "RS256":
            self.keys[kid] = (alg, rsa.generate_private_key(public_exponent=65537, key_size=2048))
        else:
            self.keys[kid] = (alg, ec.generate_private_key(ec.SECP256R1()))
        self.published.append(kid)

    def jwk(self, kid: str) -> dict[str, Any]:
        alg, key = self.keys[kid]
        algo = jwt.algorithms.RSAAlgorithm if alg == "RS256" else jwt.algorithms.ECAlgorithm
        out: dict[str, Any] = json.loads(algo.to_jwk(key.public_key()))
        return {**out, "kid": kid, "alg": alg, "use": "sig"}

    def token(self, kid: str, **claims: Any) -> str:
        alg, key = self.keys[kid]
        now = int(time.time())
        body = {
            "iss": ISSUER,
            "aud": AUDIENCE,
            "sub": "alice",
            "iat": now,
            "nbf": now,
            "exp": now + 300,
            "org": "acme",
            "groups": ["staff", "ml-engineers"],
            **claims,
        }
        return jwt.encode(body, key, algorithm=alg, headers={"kid": kid})

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def issuer() -> Iterator[Issuer]:
    iss = Issuer()
    iss.add_key("k1", "RS256")
    yield iss
    iss.close()


@pytest.fixture
def settings(settings: Any, issuer: Issuer) -> Any:
    return settings.model_copy(
        update={
            "oidc_issuer": ISSUER,
            "oidc_audience": AUDIENCE,
            "oidc_jwks_url": issuer.url,
            "oidc_tenant_claim": "org",
            "oidc_role_claim": "groups",
            "oidc_role_map": "ml-engineers=user,platform-admins=admin",
            "oidc_jwks_refresh_s": 0.0,
        }
    )


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_issuer_token_maps_to_tenant_and_role(
    client: httpx.AsyncClient, issuer: Issuer
) -> None:
    user = _bearer(issuer.token("k1"))
    assert (await client.get("/v1/jobs", headers=user)).status_code == 200
    # role "user" from the group mapping: not an admin
    assert_error(await client.get("/v1/admin/api-keys", headers=user), 403, "forbidden")
    admin = _bearer(issuer.token("k1", sub="bob", groups=["platform-admins"]))
    r = await client.get("/v1/admin/api-keys", headers=admin)  # admin route: no key to check
    assert r.status_code == 200, r.text
    # A group list mapping to no role, a missing or malformed tenant: 401.
    for claims in ({"groups": ["staff"]}, {"org": None}, {"org": "bad tenant\n"}):
        r = await client.get("/v1/jobs", headers=_bearer(issuer.token("k1", **claims)))
        assert_error(r, 401, "unauthorized")


async def test_wrong_audience_expired_and_string_exp_are_refused(
    client: httpx.AsyncClient, issuer: Issuer
) -> None:
    r = await client.get("/v1/jobs", headers=_bearer(issuer.token("k1", aud="another-app")))
    assert "audience" in assert_error(r, 401, "unauthorized")["message"]
    old = int(time.time()) - 1000
    r = await client.get(
        "/v1/jobs", headers=_bearer(issuer.token("k1", iat=old, nbf=old, exp=old + 300))
    )
    assert "expired" in assert_error(r, 401, "unauthorized")["message"]
    far = str(int(time.time()) + 300)
    r = await client.get("/v1/jobs", headers=_bearer(issuer.token("k1", exp=far)))
    assert_error(r, 401, "unauthorized")
    r = await client.get(
        "/v1/jobs", headers=_bearer(issuer.token("k1", exp=int(time.time()) + 86_400))
    )
    assert "lifetime" in assert_error(r, 401, "unauthorized")["message"]


async def test_key_rotation_is_picked_up_and_retired_keys_stop(
    client: httpx.AsyncClient, issuer: Issuer
) -> None:
    assert (await client.get("/v1/jobs", headers=_bearer(issuer.token("k1")))).status_code == 200
    # The issuer rotates: a new EC key is published, the old RSA key retired.
    issuer.add_key("k2", "ES256")
    issuer.published = ["k2"]
    fetches = issuer.fetches
    r = await client.get("/v1/jobs", headers=_bearer(issuer.token("k2")))
    assert r.status_code == 200, r.text
    assert issuer.fetches == fetches + 1  # an unknown kid fetched the key set again
    # A new token signed with the retired key: its kid is no longer in the key set.
    r = await client.get("/v1/jobs", headers=_bearer(issuer.token("k1", sub="carol")))
    assert "unknown key" in assert_error(r, 401, "unauthorized")["message"]
    # A key the issuer never published (an attacker's), with the right kid format.
    issuer.keys["k3"] = ("RS256", rsa.generate_private_key(public_exponent=65537, key_size=2048))
    r = await client.get("/v1/jobs", headers=_bearer(issuer.token("k3")))
    assert_error(r, 401, "unauthorized")


async def test_forged_tokens_claiming_the_issuer_are_refused(
    client: httpx.AsyncClient, issuer: Issuer
) -> None:
    now = int(time.time())
    claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": "x", "iat": now, "exp": now + 60,
              "org": "acme", "groups": ["platform-admins"]}  # fmt: skip
    # alg confusion: HS256 keyed with the issuer's public key material, and alg none
    public_pem = issuer.jwk("k1")["n"]
    forged = jwt.encode(claims, public_pem, algorithm="HS256", headers={"kid": "k1"})
    assert_error(await client.get("/v1/jobs", headers=_bearer(forged)), 401, "unauthorized")
    unsigned = jwt.encode(claims, None, algorithm="none", headers={"kid": "k1"})
    assert_error(await client.get("/v1/jobs", headers=_bearer(unsigned)), 401, "unauthorized")
    # Signed by a real key but with another issuer: not ours either (checked as our token).
    other = issuer.token("k1", iss="https://evil.example.test")
    assert_error(await client.get("/v1/jobs", headers=_bearer(other)), 401, "unauthorized")


async def test_own_tokens_still_work_with_an_issuer_configured(
    client: httpx.AsyncClient, api_key: Any
) -> None:
    r = await client.post("/v1/auth/token", json={"api_key": api_key()})
    assert r.status_code == 200
    headers = _bearer(r.json()["access_token"])
    assert (await client.get("/v1/jobs", headers=headers)).status_code == 200


def test_partial_issuer_settings_are_an_error(settings: Any) -> None:
    from control_plane.settings import Settings

    base = settings.model_dump()
    with pytest.raises(ValueError, match="oidc_jwks_url"):
        Settings(**{**base, "oidc_jwks_url": "", "jwt_secret": "x" * 32})
    with pytest.raises(ValueError, match="oidc_role_map"):
        Settings(**{**base, "oidc_role_map": "ops=root", "jwt_secret": "x" * 32})
