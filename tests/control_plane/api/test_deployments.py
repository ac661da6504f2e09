"""Deployment routes and what placement answers runners and jobs, over HTTP (on the embedded
store; placement reaching runners also on DynamoDB + S3)."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import httpx
import pytest
from gpufleet import signing

from tests.conftest import STORE_KINDS
from tests.control_plane.api.conftest import TokenFor, assert_error
from tests.control_plane.api.helpers import add_sub_job, push_model


@pytest.fixture
def implicit_replicas() -> int:
    return 1


@pytest.fixture
def settings(settings: Any, implicit_replicas: int) -> Any:
    # decide on every heartbeat: the tests change the fleet between two heartbeats
    return settings.model_copy(
        update={"placement_interval_s": 0.001, "implicit_max_replicas": implicit_replicas}
    )


def gpu(total_mb: int, used_mb: int = 0, name: str = "A100") -> dict[str, Any]:
    return {
        "index": 0,
        "uuid": "GPU-x",
        "name": name,
        "memory_total_mb": total_mb,
        "memory_used_mb": used_mb,
    }


class Runner:
    def __init__(self, client: httpx.AsyncClient, rid: str, secret: str) -> None:
        self.client, self.id, self.secret = client, rid, secret

    async def post(self, action: str, body: dict[str, Any]) -> httpx.Response:
        path = f"/v1/runners/{self.id}/{action}"
        raw = json.dumps(body).encode()
        h = signing.sign_headers(self.id, self.secret, "POST", path, body=raw)
        return await self.client.post(
            path, content=raw, headers={**h, "Content-Type": "application/json"}
        )

    async def heartbeat(self, gpus: list[dict[str, Any]], models: list[dict[str, Any]]) -> Any:
        r = await self.post("heartbeat", {"gpus": gpus, "models": models})
        assert r.status_code == 200, r.text
        return r.json()


async def register(
    client: httpx.AsyncClient, admin: dict[str, str], name: str, region: str
) -> Runner:
    r = await client.post("/v1/admin/join-tokens", headers=admin, json={"region": region})
    token = r.json()["join_token"]
    r = await client.post("/v1/runners/register", json={"join_token": token, "name": name})
    assert r.status_code == 201, r.text
    return Runner(client, r.json()["runner_id"], r.json()["secret"])


async def test_deployment_validation_and_access(
    client: httpx.AsyncClient, auth_headers: TokenFor
) -> None:
    user = await auth_headers("user", "acme")
    url = "/v1/models/add_sub/deployment"
    assert_error(await client.put(url, headers=user, json={}), 404, "not_found")
    await push_model(client, user)
    implicit = (await client.get(url, headers=user)).json()  # the push's own deployment
    assert implicit["implicit"] is True and implicit["desired"]["min_replicas"] == 0
    err = assert_error(
        await client.put(url, headers=user, json={"min_replicas": 3, "max_replicas": 2}),
        422,
        "invalid_request",
    )
    assert "max_replicas" in json.dumps(err)
    err = assert_error(
        await client.put(url, headers=user, json={"replicas": 2}), 422, "invalid_request"
    )
    assert "replicas" in json.dumps(err)
    err = assert_error(
        await client.put(url, headers=user, json={"regions": ["eu", "eu"]}), 422, "invalid_request"
    )
    assert "regions" in json.dumps(err)
    assert_error(
        await client.put(url, headers=user, json={"min_replicas": -1}), 422, "invalid_request"
    )
    viewer = await auth_headers("viewer", "acme")
    assert_error(await client.put(url, headers=viewer, json={}), 403, "forbidden")
    other = await auth_headers("user", "globex")
    assert_error(await client.put(url, headers=other, json={}), 404, "not_found")

    r = await client.put(
        url,
        headers=user,
        json={"min_replicas": 1, "max_replicas": 3, "regions": ["eu-west-1"], "gpu_memory_mb": 900},
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["desired"]["max_replicas"] == 3 and body["desired"]["gpu_memory_mb"] == 900
    assert body["replicas"] == 1 and body["observed"] == []
    assert "no healthy runner" in body["reason"]
    r = await client.get(url, headers=viewer)
    assert r.status_code == 200 and r.json()["desired"]["regions"] == ["eu-west-1"]
    assert_error(await client.get(url, headers=other), 404, "not_found")


async def test_openapi_has_deployment_routes(client: httpx.AsyncClient) -> None:
    spec = (await client.get("/openapi.json")).json()
    ops = spec["paths"]["/v1/models/{name}/deployment"]
    assert {"get", "put"} <= set(ops)


@pytest.mark.parametrize("store_kind", STORE_KINDS)
async def test_placement_reaches_runners_and_gates_leases(
    client: httpx.AsyncClient, auth_headers: TokenFor
) -> None:
    admin = await auth_headers("admin", "default")
    user = await auth_headers("user", "acme")
    await push_model(client, user)
    eu = await register(client, admin, "eu-1", "eu-west-1")
    us = await register(client, admin, "us-1", "us-east-1")
    # no deployment anywhere: runners keep their local models (desired_models None)
    assert (await eu.heartbeat([gpu(16000)], []))["desired_models"] is None

    r = await client.put(
        "/v1/models/add_sub/deployment",
        headers=user,
        json={"min_replicas": 1, "max_replicas": 2, "regions": ["eu-west-1"], "gpu_memory_mb": 900},
    )
    assert r.status_code == 200, r.text
    local = {"name": "scratch", "version": "3", "state": "READY"}
    answer_us = await us.heartbeat([gpu(16000)], [local])
    # a list now: nothing placed on the us runner; its undeployed local model is left alone
    assert answer_us["desired_models"] == [
        {
            "name": "scratch",
            "version": "3",
            "gpus": None,
            "files": [],
            "memory_mb": None,
            "managed": False,
        }
    ]
    answer = await eu.heartbeat([gpu(16000)], [])
    (want,) = answer["desired_models"]
    assert (want["name"], want["version"], want["gpus"], want["managed"]) == (
        "add_sub",
        "1",
        [0],
        True,
    )
    assert want["memory_mb"] == 900
    assert {f["path"] for f in want["files"]} == {"config.pbtxt", "1/model.py"}
    async with httpx.AsyncClient() as bucket:  # the presigned GETs serve the verified bytes
        for f in want["files"]:
            got = await bucket.get(f["url"])
            assert got.status_code == 200
            assert len(got.content) == f["size"]
            assert hashlib.sha256(got.content).hexdigest() == f["sha256"]

    job = (await client.post("/v1/jobs", headers=user, json=add_sub_job())).json()
    offer = {"models": [{"name": "add_sub", "version": "1"}], "max_jobs": 1, "wait_s": 0}
    # placed but not READY there yet: no lease, and the job says why it waits
    r = await eu.post("lease", offer)
    assert r.status_code == 200 and r.json()["jobs"] == []
    view = (await client.get(f"/v1/jobs/{job['id']}", headers=user)).json()
    assert view["status"] == "QUEUED" and "being fetched by " + eu.id in view["waiting_reason"]
    await eu.heartbeat([gpu(16000)], [{"name": "add_sub", "version": "1", "state": "LOADING"}])
    view = (await client.get(f"/v1/jobs/{job['id']}", headers=user)).json()
    assert view["waiting_reason"].startswith("loading")
    deployment = (await client.get("/v1/models/add_sub/deployment", headers=user)).json()
    assert [(o["runner_id"], o["state"], o["desired"]) for o in deployment["observed"]] == [
        (eu.id, "LOADING", True)
    ]
    # the us runner offers it without having reported it READY: no job for it
    await us.heartbeat([gpu(16000)], [])
    assert (await us.post("lease", offer)).json()["jobs"] == []
    ready = {"name": "add_sub", "version": "1", "state": "READY", "memory_mb": 700}
    await eu.heartbeat([gpu(16000, 700)], [ready])
    r = await eu.post("lease", offer)
    (leased,) = r.json()["jobs"]
    assert leased["id"] == job["id"] and leased["model_version"] == "1"
    deployment = (await client.get("/v1/models/add_sub/deployment", headers=user)).json()
    assert deployment["observed"][0]["state"] == "READY"
    model = (await client.get("/v1/models/add_sub", headers=user)).json()
    assert model["versions"][0]["loaded_on"] == [eu.id]
    # the measured memory replaces the declared value for this GPU type
    answer = await eu.heartbeat([gpu(16000, 700)], [ready])
    assert answer["desired_models"][0]["memory_mb"] == 700


@pytest.mark.parametrize("implicit_replicas", [0])  # no cold start placed before the PUT
async def test_waiting_reason_without_runners_and_in_other_region(
    client: httpx.AsyncClient, auth_headers: TokenFor
) -> None:
    admin = await auth_headers("admin", "default")
    user = await auth_headers("user", "acme")
    await push_model(client, user)
    job = (await client.post("/v1/jobs", headers=user, json=add_sub_job())).json()
    view = (await client.get(f"/v1/jobs/{job['id']}", headers=user)).json()
    assert view["waiting_reason"] == "no healthy runner is connected"
    us = await register(client, admin, "us-1", "us-east-1")
    await us.heartbeat([gpu(16000)], [])
    pinned = add_sub_job(region="eu-west-1", regions_allowed=["eu-west-1"])
    job = (await client.post("/v1/jobs", headers=user, json=pinned)).json()
    view = (await client.get(f"/v1/jobs/{job['id']}", headers=user)).json()
    assert view["waiting_reason"] == (
        "waiting for a runner in eu-west-1 (pinned); "
        "no healthy runner in regions_allowed ['eu-west-1']"
    )
    preferred = add_sub_job(region="eu-west-1", spill_after_s=40)
    job = (await client.post("/v1/jobs", headers=user, json=preferred)).json()
    view = (await client.get(f"/v1/jobs/{job['id']}", headers=user)).json()
    assert view["waiting_reason"].startswith(
        "waiting for a runner in eu-west-1; may spill to us-east-1 in "
    )
    # deployed with more memory than any GPU has: the job says so
    r = await client.put(
        "/v1/models/add_sub/deployment", headers=user, json={"gpu_memory_mb": 90000}
    )
    assert r.status_code == 200
    assert "not enough GPU memory" in r.json()["reason"]
    job = (await client.post("/v1/jobs", headers=user, json=add_sub_job())).json()
    view = (await client.get(f"/v1/jobs/{job['id']}", headers=user)).json()
    assert "not enough GPU memory" in view["waiting_reason"]
    assert "needs 90000 MB" in view["waiting_reason"]


def versions_of(answer: Any) -> list[str]:
    return [m["version"] for m in answer["desired_models"] if m["name"] == "add_sub"]


async def test_rollout_moves_jobs_to_the_new_version_and_keeps_pinned_ones(
    client: httpx.AsyncClient, auth_headers: TokenFor
) -> None:
    admin = await auth_headers("admin", "default")
    user = await auth_headers("user", "acme")
    await push_model(client, user)
    eu = await register(client, admin, "eu-1", "eu-west-1")

    def ready(*versions: str) -> list[dict[str, Any]]:
        return [{"name": "add_sub", "version": v, "state": "READY"} for v in versions]

    await eu.heartbeat([gpu(16000)], ready("1"))
    r = await client.put("/v1/models/add_sub/deployment", headers=user, json={})
    assert r.status_code == 200, r.text
    assert versions_of(await eu.heartbeat([gpu(16000)], ready("1"))) == ["1"]

    assert (await push_model(client, user, salt="v2"))["version"] == "2"
    # v2 is the target; v1 stays while v2 is not READY on the runner
    assert versions_of(await eu.heartbeat([gpu(16000)], ready("1"))) == ["2", "1"]
    offer = {
        "models": [{"name": "add_sub", "version": "1"}, {"name": "add_sub", "version": "2"}],
        "max_jobs": 5,
        "wait_s": 0,
    }
    first = (await client.post("/v1/jobs", headers=user, json=add_sub_job())).json()
    (leased,) = (await eu.post("lease", offer)).json()["jobs"]
    assert (leased["id"], leased["model_version"]) == (first["id"], "1")  # v2 not READY yet

    # v2 READY: v1 is no longer desired, new jobs run on v2
    assert versions_of(await eu.heartbeat([gpu(16000)], ready("1", "2"))) == ["2"]
    second = (await client.post("/v1/jobs", headers=user, json=add_sub_job())).json()
    (leased,) = (await eu.post("lease", offer)).json()["jobs"]
    assert (leased["id"], leased["model_version"]) == (second["id"], "2")

    # a job pinned to v1 keeps v1 placed until it ran
    pinned = (
        await client.post("/v1/jobs", headers=user, json=add_sub_job(model_version="1"))
    ).json()
    assert versions_of(await eu.heartbeat([gpu(16000)], ready("2"))) == ["2", "1"]
    view = (await client.get(f"/v1/jobs/{pinned['id']}", headers=user)).json()
    assert "being fetched" in view["waiting_reason"]
    assert (await eu.post("lease", offer)).json()["jobs"] == []  # v1 not READY there now
    await eu.heartbeat([gpu(16000)], ready("1", "2"))
    (leased,) = (await eu.post("lease", offer)).json()["jobs"]
    assert (leased["id"], leased["model_version"]) == (pinned["id"], "1")
    assert versions_of(await eu.heartbeat([gpu(16000)], ready("1", "2"))) == ["2"]
