"""Region fields over HTTP on the embedded store: tenant defaults and limits on submit, the job
view, GET /v1/regions, GET /v1/runners by region, heartbeat RTTs, the OpenAPI schema."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from control_plane.settings import TenantRegions
from tests.control_plane.api.conftest import TokenFor, assert_error
from tests.control_plane.api.helpers import add_sub_job, push_model
from tests.control_plane.api.test_deployments import gpu, register

EU = ["eu-west-1", "eu-central-1"]


@pytest.fixture
def settings(settings: Any) -> Any:
    return settings.model_copy(
        update={
            "control_plane_region": "eu-west-1",
            "region_spill_after_s": 45.0,
            "tenant_regions": {
                "acme": TenantRegions(default_region="eu-west-1", regions_allowed=EU)
            },
        }
    )


async def test_tenant_defaults_limits_and_the_job_view(
    client: httpx.AsyncClient, auth_headers: TokenFor
) -> None:
    user = await auth_headers("user", "acme")
    await push_model(client, user)
    r = await client.post("/v1/jobs", headers=user, json=add_sub_job())
    view = (await client.get(f"/v1/jobs/{r.json()['id']}", headers=user)).json()
    assert (view["region"], view["regions_allowed"], view["spill_after_s"]) == (
        "eu-west-1",
        EU,
        None,
    )
    # no live runner anywhere: nowhere to spill to, and placement's own words after it
    assert view["waiting_reason"] == (
        "waiting for a runner in eu-west-1; no other region within "
        "['eu-west-1', 'eu-central-1'] has a live runner to spill to; "
        "no healthy runner is connected"
    )
    narrowed = add_sub_job(region="eu-central-1", regions_allowed=["eu-central-1"])
    r = await client.post("/v1/jobs", headers=user, json=narrowed)
    view = (await client.get(f"/v1/jobs/{r.json()['id']}", headers=user)).json()
    assert (view["region"], view["regions_allowed"]) == ("eu-central-1", ["eu-central-1"])
    for body, field in (
        (add_sub_job(region="us-east-1"), "region"),
        (add_sub_job(regions_allowed=["us-east-1"]), "regions_allowed"),
        (add_sub_job(region="eu west"), "region"),
    ):
        err = assert_error(
            await client.post("/v1/jobs", headers=user, json=body), 422, "invalid_request"
        )
        assert err["details"][0]["field"] == field, err
    batch = {"jobs": [add_sub_job(), add_sub_job(regions_allowed=["us-east-1"])]}
    err = assert_error(
        await client.post("/v1/jobs/batch", headers=user, json=batch), 422, "invalid_request"
    )
    assert err["details"][0]["field"] == "jobs[1].regions_allowed"
    err = assert_error(
        await client.post(
            "/v1/models/add_sub/infer",
            headers=user,
            json={"inputs": add_sub_job()["inputs"], "region": "us-east-1"},
        ),
        422,
        "invalid_request",
    )
    assert err["details"][0]["field"] == "region"


async def test_regions_and_runners_by_region(
    client: httpx.AsyncClient, auth_headers: TokenFor
) -> None:
    admin = await auth_headers("admin", "default")
    viewer = await auth_headers("viewer", "acme")
    assert (await client.get("/v1/regions")).status_code == 401
    eu = await register(client, admin, "eu-1", "eu-west-1")
    us = await register(client, admin, "us-1", "us-east-1")
    await eu.heartbeat([gpu(16000)], [])
    r = await us.post("heartbeat", {"gpus": [gpu(16000)], "models": [], "rtt_ms": 81.5})
    assert r.status_code == 200, r.text
    table = (await client.get("/v1/regions", headers=viewer)).json()
    assert table["control_plane_region"] == "eu-west-1"
    assert table["default_spill_after_s"] == 45.0
    regions = {x["region"]: x for x in table["regions"]}
    assert regions["us-east-1"]["rtt_to_control_plane_ms"] == 81.5
    assert regions["eu-west-1"]["rtt_to_control_plane_ms"] is None
    assert regions["us-east-1"]["live_runners"] == 1
    (pair,) = table["latency"]
    assert (pair["from_region"], pair["to_region"], pair["source"]) == (
        "eu-west-1",
        "us-east-1",
        "measured",
    )
    assert pair["rtt_ms"] == 81.5 and pair["static_ms"] > 50
    listed = (await client.get("/v1/runners", headers=viewer)).json()
    assert listed["by_region"] == {"eu-west-1": {"ONLINE": 1}, "us-east-1": {"ONLINE": 1}}
    only = (await client.get("/v1/runners?region=us-east-1", headers=viewer)).json()
    assert [(x["id"], x["rtt_ms"]) for x in only["runners"]] == [(us.id, 81.5)]
    bad = await us.post("heartbeat", {"gpus": [], "models": [], "rtt_ms": -1})
    assert_error(bad, 422, "invalid_request")


async def test_openapi_documents_the_region_fields(client: httpx.AsyncClient) -> None:
    doc = (await client.get("/openapi.json")).json()
    assert "get" in doc["paths"]["/v1/regions"]
    schemas = doc["components"]["schemas"]
    assert {"region", "regions_allowed", "spill_after_s"} <= set(
        schemas["JobRequest"]["properties"]
    )
    assert {"region", "regions_allowed"} <= set(schemas["InferRequest"]["properties"])
    assert {"default_region", "regions_allowed", "region_buckets"} <= set(
        schemas["DeploymentSpec"]["properties"]
    )
    assert "rtt_ms" in schemas["HeartbeatRequest"]["properties"]
    assert "by_region" in schemas["RunnerList"]["properties"]
    assert "latency" in schemas["RegionTable"]["properties"]
