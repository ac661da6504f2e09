"""Item 10 (auth): a JWT ``exp`` given as a string is refused; a maximum token lifetime."""

from __future__ import annotations

import time
from typing import Any

import httpx
import jwt
import pytest

from control_plane.errors import Unauthorized
from control_plane.services.claims import check_time_claims
from control_plane.settings import Settings
from tests.conftest import TEST_JWT_SECRET
from tests.control_plane.api.conftest import TokenFor, assert_error


def _forge(services: Any, key_id: str, **overrides: Any) -> str:
    """A token signed with the deployment's key (what a holder of the key, or a bug, could
    produce), with some claims replaced: its current key pair, or the HS256 secret."""
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": "gpufleet",
        "aud": "gpufleet",
        "sub": key_id,
        "tenant": "acme",
        "role": "user",
        "scopes": ["jobs:read"],
        "iat": now,
        "nbf": now,
        "exp": now + 600,
        "jti": "x" * 16,
    }
    claims.update(overrides)
    keys = services.signing_keys
    if keys is not None and services.settings.access_token_algorithm != "HS256":
        return str(keys.sign(claims, "at+jwt"))
    return jwt.encode(claims, TEST_JWT_SECRET, algorithm="HS256", headers={"typ": "at+jwt"})


@pytest.fixture
def key_id(services: Any) -> str:
    return str(services.auth.issue_api_key("acme", "user", "u").id)


async def test_well_formed_token_is_accepted(
    client: httpx.AsyncClient, services: Any, key_id: str
) -> None:
    """Control for the forgeries below: the same claims with numeric times pass."""
    token = _forge(services, key_id)
    r = await client.get("/v1/jobs", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("claim", ["exp", "iat", "nbf"])
async def test_string_time_claims_are_refused(
    client: httpx.AsyncClient, services: Any, key_id: str, claim: str
) -> None:
    value = str(int(time.time()) + (600 if claim == "exp" else 0))
    token = _forge(services, key_id, **{claim: value})
    r = await client.get("/v1/jobs", headers={"Authorization": f"Bearer {token}"})
    assert claim in assert_error(r, 401, "unauthorized")["message"]


async def test_token_longer_than_max_lifetime_is_refused(
    client: httpx.AsyncClient, services: Any, key_id: str, settings: Any
) -> None:
    now = int(time.time())
    token = _forge(services, key_id, exp=now + settings.max_token_lifetime_s + 60)
    r = await client.get("/v1/jobs", headers={"Authorization": f"Bearer {token}"})
    assert "lifetime" in assert_error(r, 401, "unauthorized")["message"]


async def test_issued_tokens_live_within_the_maximum(
    client: httpx.AsyncClient, auth_headers: TokenFor
) -> None:
    headers = await auth_headers()
    claims = jwt.decode(headers["Authorization"][7:], options={"verify_signature": False})
    assert isinstance(claims["exp"], int) and claims["exp"] - claims["iat"] <= 3600


def test_check_time_claims_unit() -> None:
    check_time_claims({"exp": 10, "iat": 0}, 10)
    for bad in (
        {"exp": True, "iat": 0},
        {"exp": 11, "iat": 0},
        {"exp": 5},
        {"exp": 1.5e9, "iat": "0"},
    ):
        with pytest.raises(Unauthorized):
            check_time_claims(bad, 10)


def test_access_ttl_above_the_maximum_is_a_settings_error(tmp_path: Any) -> None:
    with pytest.raises(ValueError, match="max_token_lifetime_s"):
        Settings(embedded=True, data_dir=tmp_path, access_token_ttl_s=7200)
