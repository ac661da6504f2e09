"""Region defaults of tenants and API keys over HTTP (docs/regions.md): admin only, 422 naming
the field, precedence request > API key > stored tenant > ``tenant_regions`` setting, and
leasing: a job of a key whose ``regions_allowed`` excludes a region never runs there, its
``default_region`` steers it."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from control_plane.app import Services
from control_plane.settings import TenantRegions
from tests.control_plane.api.conftest import TokenFor, assert_error
from tests.control_plane.api.helpers import add_sub_job, push_model
from tests.control_plane.api.test_deployments import Runner, gpu, register

EU = ["eu-west-1", "eu-central-1"]
READY = [{"name": "add_sub", "version": "1", "state": "READY"}]
OFFER = {"models": [{"name": "add_sub", "version": "1"}], "max_jobs": 10, "wait_s": 0}


@pytest.fixture
def settings(settings: Any) -> Any:
    return settings.model_copy(
        update={
            "region_spill_after_s": 45.0,
            "tenant_regions": {
                "seeded": TenantRegions(default_region="eu-west-1", regions_allowed=EU)
            },
        }
    )


async def key_headers(
    client: httpx.AsyncClient, services: Services, role: str, tenant: str
) -> tuple[str, dict[str, str]]:
    """A new API key's id and the Authorization header of its access token."""
    created = services.auth.issue_api_key(tenant, role, f"{role}@{tenant}")
    r = await client.post("/v1/auth/token", json={"api_key": created.api_key})
    assert r.status_code == 200, r.text
    return created.id, {"Authorization": f"Bearer {r.json()['access_token']}"}


async def submit(client: httpx.AsyncClient, headers: dict[str, str], **extra: Any) -> Any:
    r = await client.post("/v1/jobs", headers=headers, json=add_sub_job(**extra))
    assert r.status_code in (200, 201, 202), r.text
    view = (await client.get(f"/v1/jobs/{r.json()['id']}", headers=headers)).json()
    return view


async def leased(runner: Runner) -> list[str]:
    r = await runner.post("lease", OFFER)
    assert r.status_code == 200, r.text
    return [j["id"] for j in r.json()["jobs"]]


async def test_admin_only_and_field_errors(
    client: httpx.AsyncClient, services: Services, auth_headers: TokenFor
) -> None:
    admin = await auth_headers("admin", "default")
    key_id, user = await key_headers(client, services, "user", "acme")
    routes = [
        ("GET", "/v1/admin/regions"),
        ("GET", "/v1/admin/tenants/acme/regions"),
        ("PUT", "/v1/admin/tenants/acme/regions"),
        ("DELETE", "/v1/admin/tenants/acme/regions"),
        ("GET", f"/v1/admin/api-keys/{key_id}/regions"),
        ("PUT", f"/v1/admin/api-keys/{key_id}/regions"),
        ("DELETE", f"/v1/admin/api-keys/{key_id}/regions"),
    ]
    body = {"default_region": "eu-west-1"}
    for method, url in routes:
        kwargs: dict[str, Any] = {"json": body} if method == "PUT" else {}
        assert (await client.request(method, url, **kwargs)).status_code == 401
        r = await client.request(method, url, headers=user, **kwargs)
        assert_error(r, 403, "forbidden")
        assert (await client.request(method, url, headers=admin, **kwargs)).status_code == 200
    url = "/v1/admin/tenants/acme/regions"
    for bad, field in (
        ({"default_region": "eu-west-9"}, "default_region"),  # unknown
        ({"regions_allowed": ["eu-west-1", "mars-1"]}, "regions_allowed[1]"),
        ({"regions_allowed": ["eu west"]}, "regions_allowed"),  # not a region name
        ({"default_region": "us-east-1", "regions_allowed": EU}, "default_region"),
        ({"regions_allowed": ["eu-west-1", "eu-west-1"]}, "regions_allowed"),
        ({"regions": EU}, "regions"),
    ):
        err = assert_error(await client.put(url, headers=admin, json=bad), 422, "invalid_request")
        assert err["details"][0]["field"].startswith(field), (bad, err)
        if field != "regions_allowed":
            assert err["details"][0]["field"] == field, (bad, err)
    err = assert_error(await client.put(url, headers=admin), 422, "invalid_request")
    assert err["details"][0]["field"] == "body"
    # a region becomes known once a runner registered there
    assert_error(
        await client.put(url, headers=admin, json={"default_region": "onprem-a"}),
        422,
        "invalid_request",
    )
    await register(client, admin, "rack", "onprem-a")
    r = await client.put(url, headers=admin, json={"default_region": "onprem-a"})
    assert r.status_code == 200 and r.json()["default_region"] == "onprem-a", r.text
    # keys: unknown key 404; a key's limit stays inside its tenant's
    assert_error(
        await client.get("/v1/admin/api-keys/key_nope/regions", headers=admin), 404, "not_found"
    )
    assert_error(
        await client.get("/v1/admin/api-keys/nokey/regions", headers=admin), 422, "invalid_request"
    )
    seeded_id, _ = await key_headers(client, services, "user", "seeded")
    kurl = f"/v1/admin/api-keys/{seeded_id}/regions"
    err = assert_error(
        await client.put(
            kurl, headers=admin, json={"regions_allowed": ["eu-central-1", "us-east-1"]}
        ),
        422,
        "invalid_request",
    )
    assert err["details"][0]["field"] == "regions_allowed[1]"
    err = assert_error(
        await client.put(kurl, headers=admin, json={"default_region": "us-east-1"}),
        422,
        "invalid_request",
    )
    assert err["details"][0]["field"] == "default_region"
    r = await client.put(kurl, headers=admin, json={"regions_allowed": ["eu-central-1"]})
    view = r.json()
    assert (view["scope"], view["tenant"], view["key_id"], view["source"]) == (
        "key",
        "seeded",
        seeded_id,
        "stored",
    )
    # effective: the key's limit; the tenant's default is outside it, so none
    assert view["effective"] == {
        "api_version": "v1",
        "default_region": None,
        "regions_allowed": ["eu-central-1"],
    }
    listing = (await client.get("/v1/admin/regions", headers=admin)).json()
    assert [(t["tenant"], t["source"]) for t in listing["tenants"]] == [
        ("acme", "stored"),
        ("seeded", "settings"),
    ]
    assert [k["key_id"] for k in listing["keys"]] == [seeded_id]


async def test_precedence_request_key_tenant_setting(
    client: httpx.AsyncClient, services: Services, auth_headers: TokenFor
) -> None:
    admin = await auth_headers("admin", "default")
    key_id, user = await key_headers(client, services, "user", "seeded")
    await push_model(client, user)
    turl = "/v1/admin/tenants/seeded/regions"
    kurl = f"/v1/admin/api-keys/{key_id}/regions"
    # the tenant_regions setting (seed)
    view = await submit(client, user)
    assert (view["region"], view["regions_allowed"]) == ("eu-west-1", EU)
    got = (await client.get(turl, headers=admin)).json()
    assert (got["source"], got["default_region"], got["regions_allowed"]) == (
        "settings",
        "eu-west-1",
        EU,
    )
    # a stored tenant record replaces the seed whole
    r = await client.put(turl, headers=admin, json={"default_region": "us-east-1"})
    assert r.json()["source"] == "stored" and r.json()["updated_at"], r.text
    view = await submit(client, user)
    assert (view["region"], view["regions_allowed"]) == ("us-east-1", None)
    # the key's record over the tenant's
    r = await client.put(
        kurl, headers=admin, json={"default_region": "eu-central-1", "regions_allowed": EU}
    )
    assert r.json()["effective"]["default_region"] == "eu-central-1", r.text
    view = await submit(client, user)
    assert (view["region"], view["regions_allowed"]) == ("eu-central-1", EU)
    # the request over the key, inside the key's limit; outside it: 422 naming the field
    view = await submit(client, user, region="eu-west-1")
    assert (view["region"], view["regions_allowed"]) == ("eu-west-1", EU)
    for extra, field in (
        ({"region": "us-east-1"}, "region"),
        ({"regions_allowed": ["us-east-1"]}, "regions_allowed"),
    ):
        r = await client.post("/v1/jobs", headers=user, json=add_sub_job(**extra))
        err = assert_error(r, 422, "invalid_request")
        assert err["details"][0]["field"] == field
    # another key of the tenant: the tenant's record
    _, other = await key_headers(client, services, "user", "seeded")
    view = await submit(client, other)
    assert (view["region"], view["regions_allowed"]) == ("us-east-1", None)
    # the tenant narrowed below the key's limit: the intersection applies, and the key's
    # default outside it does not
    await client.put(turl, headers=admin, json={"regions_allowed": ["eu-west-1"]})
    view = await submit(client, user)
    assert (view["region"], view["regions_allowed"]) == (None, ["eu-west-1"])
    await client.put(turl, headers=admin, json={"regions_allowed": ["us-east-1"]})
    r = await client.post("/v1/jobs", headers=user, json=add_sub_job())  # no overlap left
    assert assert_error(r, 422, "invalid_request")["details"][0]["field"] == "regions_allowed"
    # reset: the key back on the tenant, the tenant back on the seed
    r = await client.delete(kurl, headers=admin)
    assert r.json()["source"] == "none"
    r = await client.delete(turl, headers=admin)
    assert r.json()["source"] == "settings"
    view = await submit(client, user)
    assert (view["region"], view["regions_allowed"]) == ("eu-west-1", EU)


async def test_a_keys_limit_is_never_crossed_and_its_default_steers(
    client: httpx.AsyncClient, services: Services, auth_headers: TokenFor
) -> None:
    admin = await auth_headers("admin", "default")
    eu_key, eu_user = await key_headers(client, services, "user", "acme")
    _, plain = await key_headers(client, services, "user", "acme")
    await push_model(client, plain)
    runners = {
        region: await register(client, admin, region, region)
        for region in ("us-east-1", "eu-west-1", "eu-central-1")
    }
    for r in runners.values():
        await r.heartbeat([gpu(16000)], READY)
    us, west, central = runners["us-east-1"], runners["eu-west-1"], runners["eu-central-1"]
    r = await client.put(
        "/v1/admin/tenants/acme/regions", headers=admin, json={"default_region": "us-east-1"}
    )
    assert r.status_code == 200, r.text
    r = await client.put(
        f"/v1/admin/api-keys/{eu_key}/regions",
        headers=admin,
        json={"default_region": "eu-central-1", "regions_allowed": EU},
    )
    assert r.status_code == 200, r.text

    # the key's default steers: waiting for eu-central-1 (spill after 45 s)
    steered = {(await submit(client, eu_user))["id"] for _ in range(3)}
    assert await leased(us) == [] and await leased(west) == []
    assert set(await leased(central)) == steered
    # spill at once: the other EU region may take them, the US runner never
    spilling = {(await submit(client, eu_user, spill_after_s=0))["id"] for _ in range(4)}
    for _ in range(3):
        assert await leased(us) == []
    assert set(await leased(west)) == spilling
    # the tenant's default for the tenant's other keys
    other = (await submit(client, plain))["id"]
    assert await leased(central) == [] and await leased(west) == []
    assert await leased(us) == [other]


async def test_openapi_documents_the_region_defaults_routes(client: httpx.AsyncClient) -> None:
    doc = (await client.get("/openapi.json")).json()
    for path in ("/v1/admin/tenants/{tenant}/regions", "/v1/admin/api-keys/{key_id}/regions"):
        assert {"get", "put", "delete"} <= set(doc["paths"][path])
        body = doc["paths"][path]["put"]["requestBody"]["content"]["application/json"]
        assert body["schema"]["$ref"].endswith("/RegionDefaultsSpec")
    assert "get" in doc["paths"]["/v1/admin/regions"]
    schemas = doc["components"]["schemas"]
    assert {"default_region", "regions_allowed"} <= set(schemas["RegionDefaultsSpec"]["properties"])
    assert {"scope", "source", "effective"} <= set(schemas["RegionDefaultsView"]["properties"])
