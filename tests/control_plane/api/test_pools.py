"""The pools API over HTTP (in process): admin only, validation naming the field, the stored
decision and decision log in ``GET``, deletion only without hosts, OpenAPI and /metrics."""

from __future__ import annotations

import uuid
from typing import Any

import boto3
import httpx
import pytest

from control_plane.composition import Services
from tests.control_plane.api.conftest import TokenFor, assert_error


@pytest.fixture
def pool_token_uses() -> int:
    return 1000


@pytest.fixture
def settings(settings: Any, moto_endpoint: str, pool_token_uses: int) -> Any:
    return settings.model_copy(
        update={
            "capacity_aws_endpoint_url": moto_endpoint,
            "capacity_runner_url": "http://127.0.0.1:9",
            "capacity_pool_token_uses": pool_token_uses,
        }
    )


@pytest.fixture
def group(moto_endpoint: str) -> str:
    """An empty Auto Scaling group on moto."""
    kw = {"region_name": "us-east-1", "endpoint_url": moto_endpoint}
    ec2, asg = boto3.client("ec2", **kw), boto3.client("autoscaling", **kw)
    name = f"g-{uuid.uuid4().hex[:8]}"
    ami = ec2.describe_images()["Images"][0]["ImageId"]
    ec2.create_launch_template(LaunchTemplateName=f"lt-{name}", LaunchTemplateData={"ImageId": ami})
    asg.create_auto_scaling_group(
        AutoScalingGroupName=name,
        LaunchTemplate={"LaunchTemplateName": f"lt-{name}"},
        MinSize=0,
        MaxSize=2,
        DesiredCapacity=0,
        AvailabilityZones=["us-east-1a"],
    )
    return name


def docker_pool(**over: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "gpu_type": "A10G",
        "gpu_count": 1,
        "region": "eu-west-1",
        "max_hosts": 3,
        "idle_timeout_s": 120,
        "provider": {"kind": "docker", "settings": {"image": "gpufleet/runner:1"}},
    }
    body.update(over)
    return body


async def test_put_get_list_delete(
    client: httpx.AsyncClient, auth_headers: TokenFor, group: str, services: Services
) -> None:
    admin = await auth_headers("admin")
    r = await client.put("/v1/pools/gpu-a10g", json=docker_pool(), headers=admin)
    assert r.status_code == 200, r.text
    view = r.json()
    assert view["name"] == "gpu-a10g" and view["spec"]["max_hosts"] == 3
    assert view["spec"]["provider"]["settings"] == {"image": "gpufleet/runner:1"}
    assert view["hosts"] == [] and view["target"] == 0 and view["events"] == []

    asg = {"max_hosts": 2, "provider": {"kind": "aws-asg", "settings": {"group": group}}}
    r = await client.put("/v1/pools/asg", json=asg, headers=admin)
    assert r.status_code == 200, r.text
    listed = (await client.get("/v1/pools", headers=admin)).json()
    assert [p["name"] for p in listed["pools"]] == ["asg", "gpu-a10g"]

    # a decision round (the lifespan loop's work) shows up in GET and /metrics
    assert services.capacity is not None
    services.capacity.reconcile(force=True)
    got = (await client.get("/v1/pools/asg", headers=admin)).json()
    assert got["target"] == 0 and got["decided_at"] and "no change" in got["reason"]
    metrics = (await client.get("/metrics", headers=admin)).text
    assert 'gpufleet_pool_target_hosts{pool="asg"} 0.0' in metrics
    assert 'gpufleet_pool_hosts{pool="asg",state="up"} 0.0' in metrics

    r = await client.delete("/v1/pools/asg", headers=admin)
    assert r.status_code == 200 and r.json()["deleted"] is True
    assert_error(await client.get("/v1/pools/asg", headers=admin), 404, "not_found")
    assert_error(await client.delete("/v1/pools/asg", headers=admin), 404, "not_found")


async def test_admin_only(client: httpx.AsyncClient, auth_headers: TokenFor) -> None:
    user = await auth_headers("user")
    assert_error(
        await client.put("/v1/pools/p", json=docker_pool(), headers=user), 403, "forbidden"
    )
    assert_error(await client.get("/v1/pools/p", headers=user), 403, "forbidden")
    assert_error(await client.get("/v1/pools", headers=user), 403, "forbidden")
    assert_error(await client.delete("/v1/pools/p", headers=user), 403, "forbidden")
    assert_error(await client.get("/v1/pools"), 401, "unauthorized")


@pytest.mark.parametrize(
    ("name", "body", "field"),
    [
        ("Bad_Name", docker_pool(), "name"),
        ("p", docker_pool(min_hosts=4, max_hosts=3), "max_hosts"),
        ("p", docker_pool(warm_hosts=4), "warm_hosts"),
        ("p", docker_pool(max_hosts=-1), "max_hosts"),
        ("p", docker_pool(jobs_per_host=0), "jobs_per_host"),
        ("p", docker_pool(provider={"kind": "k8s"}), "provider.kind"),
        ("p", docker_pool(provider={"kind": "docker", "settings": {}}), "provider.settings.image"),
        (
            "p",
            docker_pool(provider={"kind": "docker", "settings": {"image": "x", "volumes": ["x"]}}),
            "provider.settings.volumes",
        ),
        (
            "p",
            docker_pool(provider={"kind": "docker", "settings": {"image": "x", "nope": 1}}),
            "provider.settings.nope",
        ),
        ("p", {**docker_pool(), "surprise": 1}, "surprise"),
    ],
)
async def test_bad_specs_name_the_field(
    client: httpx.AsyncClient, auth_headers: TokenFor, name: str, body: dict[str, Any], field: str
) -> None:
    admin = await auth_headers("admin")
    r = await client.put(f"/v1/pools/{name}", json=body, headers=admin)
    err = assert_error(r, 422, "invalid_request")
    fields = {d.get("field") for d in err.get("details") or []}
    assert field in fields or field in err["message"], err


async def test_documented_in_openapi(client: httpx.AsyncClient) -> None:
    spec = (await client.get("/openapi.json")).json()
    assert {"get", "put", "delete"} <= set(spec["paths"]["/v1/pools/{name}"])
    assert "get" in spec["paths"]["/v1/pools"]


async def test_pool_join_token_registers_many_hosts_up_to_its_limit(
    client: httpx.AsyncClient, auth_headers: TokenFor, group: str, settings: Any
) -> None:
    """The aws-asg launch template bakes one token into every instance: the pool token the
    capacity code mints has the pool use limit (settings), unlike a default single-use one."""
    admin = await auth_headers("admin")
    asg = {"max_hosts": 2, "labels": {"gpu": "a10g"}, "region": "eu-west-1"}
    asg["provider"] = {"kind": "aws-asg", "settings": {"group": group}}
    assert (await client.put("/v1/pools/asg", json=asg, headers=admin)).status_code == 200
    user = await auth_headers("user")
    r = await client.post("/v1/pools/asg/join-token", headers=user)
    assert_error(r, 403, "forbidden")
    assert_error(await client.post("/v1/pools/nope/join-token", headers=admin), 404, "not_found")

    r = await client.post("/v1/pools/asg/join-token", headers=admin)
    assert r.status_code == 201, r.text
    made = r.json()
    assert made["max_uses"] == settings.capacity_pool_token_uses > 1
    for i in range(3):  # several instances of the group, one token
        body = {"join_token": made["join_token"], "name": f"i-{i}"}
        assert (await client.post("/v1/runners/register", json=body)).status_code == 201
    runners = (await client.get("/v1/runners", headers=admin)).json()["runners"]
    assert {(r["labels"]["gpufleet.pool"], r["region"], r["join_token"]) for r in runners} == {
        ("asg", "eu-west-1", made["id"])
    }
    tokens = (await client.get("/v1/admin/join-tokens", headers=admin)).json()["tokens"]
    assert [t["uses"] for t in tokens if t["id"] == made["id"]] == [3]


@pytest.mark.parametrize("pool_token_uses", [2])
async def test_pool_join_token_runs_out(
    client: httpx.AsyncClient, auth_headers: TokenFor, group: str, pool_token_uses: int
) -> None:
    uses = pool_token_uses
    admin = await auth_headers("admin")
    asg = {"max_hosts": 2, "provider": {"kind": "aws-asg", "settings": {"group": group}}}
    assert (await client.put("/v1/pools/asg", json=asg, headers=admin)).status_code == 200
    token = (await client.post("/v1/pools/asg/join-token", headers=admin)).json()["join_token"]
    codes = [
        (
            await client.post("/v1/runners/register", json={"join_token": token, "name": "i"})
        ).status_code
        for _ in range(uses + 1)
    ]
    assert codes == [201] * uses + [401]


async def test_queue_snapshot_groups_jobs_by_region_policy(
    client: httpx.AsyncClient, auth_headers: TokenFor, services: Services
) -> None:
    """The capacity autoscaler reads each queued job's region policy from the real queue
    (docs/capacity.md, "Which pool a job counts for")."""
    from tests.control_plane.api.helpers import add_sub_job, push_model

    user = await auth_headers("user", "acme")
    await push_model(client, user)
    bodies = [
        add_sub_job(regions_allowed=["us-east-1"], region="us-east-1"),
        add_sub_job(regions_allowed=["us-east-1"], region="us-east-1"),
        add_sub_job(region="eu-west-1", regions_allowed=["eu-west-1", "us-east-1"]),
        add_sub_job(),
    ]
    for body in bodies:
        r = await client.post("/v1/jobs", headers=user, json=body)
        assert r.status_code in (200, 201, 202), r.text
    snap = services.jobs.queue_snapshot(["add_sub"])["add_sub"]
    assert snap.depth == 4
    counts = {k: n for k, (n, _) in snap.by_policy.items()}
    assert counts == {"us-east-1": 2, "eu-west-1|eu-west-1,us-east-1|30": 1, "": 1}


async def test_deployment_pool_must_exist_and_declared_memory_routes(
    client: httpx.AsyncClient, auth_headers: TokenFor, services: Services, stores: Any
) -> None:
    """A deployment naming an unknown pool is refused (422, field ``pool``); the memory a
    deployment declares is what the autoscaler routes by (docs/capacity.md)."""
    from control_plane.services.capacity.build import model_memory
    from tests.control_plane.api.helpers import push_model

    admin = await auth_headers("admin")
    user = await auth_headers("user", "acme")
    await push_model(client, user)
    url = "/v1/models/add_sub/deployment"
    body = assert_error(
        await client.put(url, headers=user, json={"pool": "gpu-h100"}), 422, "invalid_request"
    )
    assert body["details"][0]["field"] == "pool"
    assert "gpu-h100" in body["message"]

    small = docker_pool(gpu_type="L4", gpu_memory_mb=24000)
    big = docker_pool(gpu_type="H100", gpu_memory_mb=80000)
    for name, spec in (("gpu-l4", small), ("gpu-h100", big)):
        assert (await client.put(f"/v1/pools/{name}", json=spec, headers=admin)).status_code == 200
    r = await client.put(url, headers=user, json={"gpu_memory_mb": 40000})
    assert r.status_code == 200, r.text
    assert model_memory(stores)["add_sub"] == {"": 40000}
    assert services.capacity is not None
    specs = {p.name: p.spec for p in services.capacity.list_pools(_admin_principal()).pools}
    assert services.capacity._router(specs)("add_sub", "") == "gpu-h100"

    r = await client.put(url, headers=user, json={"pool": "gpu-l4"})
    assert r.status_code == 200, r.text
    assert r.json()["desired"]["pool"] == "gpu-l4"
    bad = docker_pool(gpu_memory_mb=0)
    body = assert_error(
        await client.put("/v1/pools/p0", json=bad, headers=admin), 422, "invalid_request"
    )
    assert body["details"][0]["field"] == "gpu_memory_mb"


def _admin_principal() -> Any:
    from control_plane.services.principal import ROLE_SCOPES, Principal

    return Principal(sub="admin", tenant="t", role="admin", scopes=ROLE_SCOPES["admin"])
