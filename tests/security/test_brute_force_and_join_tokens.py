"""Item 9: failed API-key exchanges are throttled per key id and per client address (429 +
Retry-After); join tokens have a use limit (default 1) and an expiry; admins see which
token registered which runner, and how often each token was used."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from control_plane.errors import RateLimited
from control_plane.services.throttle import FailureThrottle
from tests.conftest import STORE_KINDS
from tests.control_plane.api.conftest import TokenFor, assert_error

PER_KEY = 5
PER_ADDRESS = 12


@pytest.fixture
def settings(settings: Any) -> Any:
    return settings.model_copy(
        update={
            "auth_failures_per_key": PER_KEY,
            "auth_failures_per_address": PER_ADDRESS,
            "auth_failure_window_s": 60.0,
        }
    )


def _wrong(key: str) -> str:
    return key[:-1] + ("0" if key[-1] != "0" else "1")


async def test_wrong_secrets_for_one_key_id_get_429(
    client: httpx.AsyncClient, api_key: Any
) -> None:
    key = api_key("user", "acme")
    for _ in range(PER_KEY):
        r = await client.post("/v1/auth/token", json={"api_key": _wrong(key)})
        assert_error(r, 401, "unauthorized")
    r = await client.post("/v1/auth/token", json={"api_key": _wrong(key)})
    assert_error(r, 429, "rate_limited")
    assert 1 <= int(r.headers["retry-after"]) <= 60
    # Locked for this key id: even the right secret waits (a guesser learns nothing).
    assert_error(await client.post("/v1/auth/token", json={"api_key": key}), 429, "rate_limited")
    # Other keys are not affected by this key's lockout (the address has budget left).
    other = api_key("user", "acme")
    assert (await client.post("/v1/auth/token", json={"api_key": other})).status_code == 200


async def test_guessing_many_key_ids_from_one_address_gets_429(
    client: httpx.AsyncClient, api_key: Any
) -> None:
    for i in range(PER_ADDRESS):
        r = await client.post("/v1/auth/token", json={"api_key": f"gf_key_guess{i}_nope"})
        assert_error(r, 401, "unauthorized")
    r = await client.post("/v1/auth/token", json={"api_key": "gf_key_guess99_nope"})
    assert_error(r, 429, "rate_limited")
    assert int(r.headers["retry-after"]) >= 1
    # The same address also cannot use a good key meanwhile; the bearer path is throttled too.
    good = api_key()
    assert_error(await client.post("/v1/auth/token", json={"api_key": good}), 429, "rate_limited")
    r = await client.get("/v1/jobs", headers={"Authorization": f"Bearer {_wrong(good)}"})
    assert_error(r, 429, "rate_limited")


async def test_another_address_is_not_throttled(app: Any, api_key: Any) -> None:
    def client_from(addr: str) -> httpx.AsyncClient:
        transport = httpx.ASGITransport(app=app, client=(addr, 4000))
        return httpx.AsyncClient(transport=transport, base_url="http://cp.test")

    async with client_from("192.0.2.1") as a, client_from("192.0.2.2") as b:
        for i in range(PER_ADDRESS + 1):
            await a.post("/v1/auth/token", json={"api_key": f"gf_key_x{i}_nope"})
        r = await a.post("/v1/auth/token", json={"api_key": api_key()})
        assert_error(r, 429, "rate_limited")
        assert (await b.post("/v1/auth/token", json={"api_key": api_key()})).status_code == 200


async def test_refresh_and_join_token_guesses_are_throttled(client: httpx.AsyncClient) -> None:
    for _ in range(PER_ADDRESS):
        r = await client.post("/v1/auth/refresh", json={"refresh_token": "rt_nope.nope"})
        assert_error(r, 401, "unauthorized")
    r = await client.post("/v1/auth/refresh", json={"refresh_token": "rt_nope.nope"})
    assert_error(r, 429, "rate_limited")
    r = await client.post("/v1/runners/register", json={"join_token": "gfj_guess", "name": "h"})
    assert_error(r, 429, "rate_limited")


def test_throttle_window_slides() -> None:
    t = [0.0]
    th = FailureThrottle(2, 10.0, now=lambda: t[0])
    th.fail(["k"])
    t[0] = 5.0
    th.fail(["k"])
    with pytest.raises(RateLimited) as exc:
        th.check(["k"], "x")
    assert exc.value.retry_after == 5
    t[0] = 10.5  # the first failure left the window
    th.check(["k"], "x")
    th.check(["other"], "x")
    assert FailureThrottle(0, 1.0).enabled is False


# ---------------------------------------------------------------------- join tokens
async def _register(client: httpx.AsyncClient, token: str, name: str) -> httpx.Response:
    return await client.post("/v1/runners/register", json={"join_token": token, "name": name})


@pytest.mark.parametrize("store_kind", STORE_KINDS)
async def test_join_token_is_single_use_by_default(
    client: httpx.AsyncClient, auth_headers: TokenFor, store_kind: str
) -> None:
    admin = await auth_headers("admin", "default")
    made = (await client.post("/v1/admin/join-tokens", headers=admin, json={})).json()
    assert made["max_uses"] == 1
    first = await _register(client, made["join_token"], "h1")
    assert first.status_code == 201, first.text
    second = await _register(client, made["join_token"], "h2")
    assert "used up" in assert_error(second, 401, "unauthorized")["message"]

    # Admins see the use and which runner it registered.
    tokens = (await client.get("/v1/admin/join-tokens", headers=admin)).json()["tokens"]
    [view] = [t for t in tokens if t["id"] == made["id"]]
    assert (view["uses"], view["max_uses"]) == (1, 1) and view["last_used_at"]
    runners = (await client.get("/v1/runners", headers=admin)).json()["runners"]
    assert [(r["id"], r["join_token"]) for r in runners] == [
        (first.json()["runner_id"], made["id"])
    ]


async def test_join_token_use_limit_and_expiry(
    client: httpx.AsyncClient, auth_headers: TokenFor, services: Any
) -> None:
    admin = await auth_headers("admin", "default")
    body = {"max_uses": 3, "labels": {"gpufleet.pool": "p"}}
    made = (await client.post("/v1/admin/join-tokens", headers=admin, json=body)).json()
    codes = [(await _register(client, made["join_token"], f"h{i}")).status_code for i in range(5)]
    assert codes == [201, 201, 201, 401, 401]
    r = await client.post("/v1/admin/join-tokens", headers=admin, json={"max_uses": 0})
    assert "max_uses" in str(assert_error(r, 422, "invalid_request"))

    # An expired token registers nothing, whatever its uses left.
    expired = services.auth.issue_join_token("default", {}, ttl_s=-1, max_uses=10)
    r = await _register(client, expired, "late")
    assert "expired" in assert_error(r, 401, "unauthorized")["message"]
