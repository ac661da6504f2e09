"""Tenant quotas over HTTP (issue 12 item 2): max queued, submit rate, the highest priority
of a key, max running at lease time; 429 with Retry-After naming the quota, admin routes."""

from __future__ import annotations

from typing import Any

import httpx

from control_plane.composition import Services
from tests.control_plane.api.conftest import TokenFor, assert_error
from tests.control_plane.api.helpers import add_sub_job, push_model


async def _token(client: httpx.AsyncClient, api_key: str) -> dict[str, str]:
    r = await client.post("/v1/auth/token", json={"api_key": api_key})
    assert r.status_code == 200, r.text
    return {"Authorization": f"Bearer {r.json()['access_token']}"}


async def _setup(client: httpx.AsyncClient, auth_headers: TokenFor) -> dict[str, str]:
    """An admin's headers, after acme pushed add_sub."""
    await push_model(client, await auth_headers("user", "acme"))
    return await auth_headers("admin", "ops")


async def test_max_queued_answers_429_naming_the_quota(
    client: httpx.AsyncClient, auth_headers: TokenFor
) -> None:
    admin = await _setup(client, auth_headers)
    r = await client.put("/v1/admin/tenants/acme/quotas", headers=admin, json={"max_queued": 3})
    assert r.status_code == 200, r.text
    assert r.json()["max_queued"] == 3 and r.json()["own"]["max_queued"] == 3
    user = await auth_headers("user", "acme")
    for _ in range(2):
        assert (await client.post("/v1/jobs", headers=user, json=add_sub_job())).status_code == 202
    keyed = {**user, "Idempotency-Key": "last-slot"}
    first = await client.post("/v1/jobs", headers=keyed, json=add_sub_job())
    assert first.status_code == 202
    # its retry (a lost answer) is a replay, answered although the tenant is at its quota
    again = await client.post("/v1/jobs", headers=keyed, json=add_sub_job())
    assert again.status_code == 200 and again.json()["id"] == first.json()["id"]
    r = await client.post("/v1/jobs", headers=keyed, json=add_sub_job(priority=3))
    assert_error(r, 409, "conflict")  # another body with the key, as without quotas
    r = await client.post("/v1/jobs", headers=user, json=add_sub_job())
    err = assert_error(r, 429, "rate_limited")
    assert err["details"]["quota"] == "max_queued" and err["details"]["limit"] == 3
    assert int(r.headers["Retry-After"]) >= 1
    # a batch that would cross the limit is refused whole
    r = await client.post("/v1/jobs/batch", headers=user, json={"jobs": [add_sub_job()] * 2})
    assert assert_error(r, 429, "rate_limited")["details"]["quota"] == "max_queued"
    # a keyed batch is replayed the same way (globex: max_queued 2)
    r = await client.put("/v1/admin/tenants/globex/quotas", headers=admin, json={"max_queued": 2})
    globex = {**(await auth_headers("admin", "globex")), "Idempotency-Key": "b1"}
    batch = {"jobs": [add_sub_job(), add_sub_job(priority=1)]}
    first = await client.post("/v1/jobs/batch", headers=globex, json=batch)
    again = await client.post("/v1/jobs/batch", headers=globex, json=batch)
    assert first.status_code == again.status_code == 202, again.text
    assert first.json()["ids"] == again.json()["ids"]
    r = await client.post("/v1/jobs/batch", headers={**globex, "Idempotency-Key": "b2"}, json=batch)
    assert_error(r, 429, "rate_limited")
    # another tenant (an admin key of initech: admins may use any model) is not affected
    other = await auth_headers("admin", "initech")
    assert (await client.post("/v1/jobs", headers=other, json=add_sub_job())).status_code == 202
    # the tenant sees its own usage
    r = await client.get("/v1/quotas", headers=user)
    assert r.status_code == 200 and r.json()["queued"] == 3 and r.json()["tenant"] == "acme"
    # exported per tenant
    text = (await client.get("/metrics", headers=admin)).text
    assert 'gpufleet_tenant_jobs{status="queued",tenant="acme"} 3.0' in text
    # cancelling one frees room
    jobs = (await client.get("/v1/jobs", headers=user)).json()["jobs"]
    assert (await client.post(f"/v1/jobs/{jobs[0]['id']}/cancel", headers=user)).status_code == 200
    assert (await client.post("/v1/jobs", headers=user, json=add_sub_job())).status_code == 202


async def test_submit_rate_token_bucket(client: httpx.AsyncClient, auth_headers: TokenFor) -> None:
    admin = await _setup(client, auth_headers)
    r = await client.put(
        "/v1/admin/tenants/acme/quotas",
        headers=admin,
        json={"submit_rate": 0.5, "submit_burst": 2},
    )
    assert r.status_code == 200, r.text
    user = await auth_headers("user", "acme")
    codes = [
        (await client.post("/v1/jobs", headers=user, json=add_sub_job())).status_code
        for _ in range(2)
    ]
    assert codes == [202, 202]
    r = await client.post("/v1/jobs", headers=user, json=add_sub_job())
    err = assert_error(r, 429, "rate_limited")
    assert err["details"]["quota"] == "submit_rate"
    assert 1 <= int(r.headers["Retry-After"]) <= 2  # one token at 0.5/s
    # a batch over the burst never fits: said so
    r = await client.post("/v1/jobs/batch", headers=user, json={"jobs": [add_sub_job()] * 3})
    err = assert_error(r, 429, "rate_limited")
    assert "never fits" in err["message"]
    # back to the defaults (no rate limit)
    r = await client.delete("/v1/admin/tenants/acme/quotas", headers=admin)
    assert r.status_code == 200 and r.json()["own"]["submit_rate"] is None
    assert (await client.post("/v1/jobs", headers=user, json=add_sub_job())).status_code == 202


async def test_key_max_priority(
    client: httpx.AsyncClient, auth_headers: TokenFor, services: Services
) -> None:
    admin = await _setup(client, auth_headers)
    created = services.auth.issue_api_key("acme", "user", "batch")
    r = await client.put(
        f"/v1/admin/api-keys/{created.id}/limits", headers=admin, json={"max_priority": 10}
    )
    assert r.status_code == 200 and r.json() == {
        "api_version": "v1",
        "key_id": created.id,
        "max_priority": 10,
    }
    for headers in (
        await _token(client, created.api_key),
        {"Authorization": f"Bearer {created.api_key}"},
    ):
        assert (
            await client.post("/v1/jobs", headers=headers, json=add_sub_job(priority=10))
        ).status_code == 202
        r = await client.post("/v1/jobs", headers=headers, json=add_sub_job(priority=11))
        err = assert_error(r, 403, "forbidden")
        assert err["details"] == {"field": "priority", "max_priority": 10}
        r = await client.post(
            "/v1/jobs/batch",
            headers=headers,
            json={"jobs": [add_sub_job(), add_sub_job(priority=50)]},
        )
        assert assert_error(r, 403, "forbidden")["details"]["field"] == "jobs[1].priority"
    # another key of the same tenant keeps the default (100)
    user = await auth_headers("user", "acme")
    r = await client.post("/v1/jobs", headers=user, json=add_sub_job(priority=100))
    assert r.status_code == 202
    # null removes the limit
    r = await client.put(
        f"/v1/admin/api-keys/{created.id}/limits", headers=admin, json={"max_priority": None}
    )
    assert r.json()["max_priority"] == 100


async def test_quota_routes_are_admin_only_and_validate(
    client: httpx.AsyncClient, auth_headers: TokenFor
) -> None:
    admin = await _setup(client, auth_headers)
    user = await auth_headers("user", "acme")
    for method, path, body in [
        ("PUT", "/v1/admin/tenants/acme/quotas", {"max_queued": 1}),
        ("GET", "/v1/admin/tenants/acme/quotas", None),
        ("GET", "/v1/admin/quotas", None),
        ("PUT", "/v1/admin/api-keys/key_abc/limits", {"max_priority": 1}),
    ]:
        r = await client.request(method, path, headers=user, json=body)
        assert_error(r, 403, "forbidden")
    bad: list[tuple[str, str, Any, str]] = [
        ("/v1/admin/tenants/acme/quotas", "PUT", {"max_queued": -1}, "max_queued"),
        ("/v1/admin/tenants/acme/quotas", "PUT", {"weight": 0}, "weight"),
        ("/v1/admin/tenants/acme/quotas", "PUT", {"max_quued": 1}, "max_quued"),
        ("/v1/admin/tenants/a%0a/quotas", "PUT", {"max_queued": 1}, "tenant"),
        ("/v1/admin/api-keys/key_x/limits", "PUT", {"max_priority": 101}, "max_priority"),
        ("/v1/admin/api-keys/nokey/limits", "PUT", {"max_priority": 1}, "key_id"),
    ]
    for path, method, body, field in bad:
        r = await client.request(method, path, headers=admin, json=body)
        err = assert_error(r, 422, "invalid_request")
        assert field in str(err["details"]), (path, body, err)
    for path in ("/v1/admin/tenants/acme/quotas", "/v1/admin/api-keys/key_x/limits"):
        r = await client.put(path, headers=admin)  # no body: nothing stored
        assert_error(r, 422, "invalid_request")
    assert (await client.get("/v1/admin/tenants/acme/quotas", headers=admin)).json()["own"] == {
        "api_version": "v1",
        "max_queued": None,
        "max_running": None,
        "submit_rate": None,
        "submit_burst": None,
        "weight": None,
    }
    r = await client.put(
        "/v1/admin/tenants/acme/quotas", headers=admin, json={"max_running": 2, "weight": 3}
    )
    assert r.status_code == 200
    listing = (await client.get("/v1/admin/quotas", headers=admin)).json()
    assert listing["defaults"]["max_queued"] == 10_000
    [acme] = [t for t in listing["tenants"] if t["tenant"] == "acme"]
    assert acme["max_running"] == 2 and acme["weight"] == 3 and acme["max_queued"] == 10_000


async def test_sdk_surfaces_the_quota(
    app: Any, client: httpx.AsyncClient, auth_headers: TokenFor, api_key: Any
) -> None:
    from gpufleet import AsyncClient, errors

    await _setup(client, auth_headers)
    transport = httpx.ASGITransport(app=app)
    async with AsyncClient(
        "http://cp.test", api_key=api_key("admin", "ops"), transport=transport
    ) as root:
        await root.admin.set_quota("acme", max_queued=1)
        view = await root.admin.set_quota("acme", weight=2)  # keeps max_queued
        assert (view.max_queued, view.weight) == (1, 2)
        assert (await root.admin.set_key_max_priority("key_abc", 5)).max_priority == 5
    inputs = {"INPUT0": [[1.0, 2, 3, 4]], "INPUT1": [[1.0, 1, 1, 1]]}
    async with AsyncClient(
        "http://cp.test", api_key=api_key("user", "acme"), max_retries=0, transport=transport
    ) as fleet:
        await fleet.submit("add_sub", inputs)
        try:
            await fleet.submit("add_sub", inputs)
        except errors.RateLimitedError as exc:
            assert exc.quota == "max_queued" and exc.retry_after == 5
            assert "max_queued" in str(exc)
        else:
            raise AssertionError("the second submit was not refused")
        mine = await fleet.quota()
        assert (mine.tenant, mine.queued, mine.max_queued) == ("acme", 1, 1)
