"""Push means servable: a pushed model gets an implicit deployment (min 0, max 1) whose first
job cold-starts it, which stands aside while a runner serves the model from its own
repository, and which ``PUT …/deployment`` replaces (on both stores)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import httpx
import pytest

from control_plane.composition import Services
from tests.conftest import STORE_KINDS
from tests.control_plane.api.conftest import TokenFor, assert_error
from tests.control_plane.api.helpers import ADD_SUB, add_sub_job, push_model
from tests.control_plane.api.test_deployments import gpu, register
from tests.helpers.spy import returned

URL = "/v1/models/add_sub/deployment"


@pytest.fixture
def implicit_replicas() -> int:
    return 1


@pytest.fixture
def settings(settings: Any, implicit_replicas: int) -> Any:
    return settings.model_copy(
        update={"placement_interval_s": 0.001, "implicit_max_replicas": implicit_replicas}
    )


def copy_as(name: str, dest: Path) -> Path:
    """add_sub under another name (its config names it too)."""
    shutil.copytree(ADD_SUB, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
    cfg = dest / name / "config.pbtxt"
    cfg.write_text(cfg.read_text().replace('"add_sub"', f'"{name}"'))
    return dest / name


def add_sub_of(answer: dict[str, Any]) -> list[dict[str, Any]]:
    return [m for m in answer["desired_models"] or [] if m["name"] == "add_sub"]


@pytest.mark.parametrize("store_kind", STORE_KINDS)
async def test_pushed_model_cold_starts_on_its_first_job(
    client: httpx.AsyncClient, auth_headers: TokenFor
) -> None:
    admin = await auth_headers("admin", "default")
    user = await auth_headers("user", "acme")
    await push_model(client, user)
    view = (await client.get(URL, headers=user)).json()
    assert view["implicit"] is True
    assert view["desired"]["min_replicas"] == 0 and view["desired"]["max_replicas"] == 1
    assert view["replicas"] == 0

    a = await register(client, admin, "a", "eu-west-1")
    # nothing placed here and only implicit deployments: the runner keeps its local repository
    assert (await a.heartbeat([gpu(16000)], []))["desired_models"] is None

    job = (await client.post("/v1/jobs", headers=user, json=add_sub_job())).json()
    # the submit decided at once (no wait for a stale decision): one replica is placed
    waiting = (await client.get(f"/v1/jobs/{job['id']}", headers=user)).json()
    assert waiting["waiting_reason"].startswith("loading:"), waiting
    answer = await a.heartbeat([gpu(16000)], [])
    placed = add_sub_of(answer)
    assert len(placed) == 1 and placed[0]["managed"] is True and placed[0]["files"]
    assert (await client.get(URL, headers=user)).json()["replicas"] == 1
    waiting = (await client.get(f"/v1/jobs/{job['id']}", headers=user)).json()
    assert "loading" in waiting["waiting_reason"] and a.id in waiting["waiting_reason"]

    loaded = [{"name": "add_sub", "version": "1", "state": "READY"}]
    await a.heartbeat([gpu(16000)], loaded)
    r = await a.post("lease", {"models": [{"name": "add_sub", "version": "1"}], "max_jobs": 1})
    assert r.status_code == 200, r.text
    assert [j["id"] for j in r.json()["jobs"]] == [job["id"]]

    # a PUT replaces the implicit deployment
    r = await client.put(URL, headers=user, json={"min_replicas": 1, "max_replicas": 2})
    assert r.status_code == 200 and r.json()["implicit"] is False
    # ... and a second push does not bring the implicit one back
    assert (await push_model(client, user, salt="v2"))["version"] == "2"
    assert (await client.get(URL, headers=user)).json()["desired"]["min_replicas"] == 1


async def test_runner_serving_its_own_copy_is_left_alone(
    client: httpx.AsyncClient, auth_headers: TokenFor, tmp_path: Path
) -> None:
    admin = await auth_headers("admin", "default")
    user = await auth_headers("user", "acme")
    await push_model(client, user)
    local = [{"name": "add_sub", "version": "1", "state": "READY"}]
    a = await register(client, admin, "a", "eu-west-1")
    b = await register(client, admin, "b", "eu-west-1")
    await a.heartbeat([gpu(16000)], local)
    await b.heartbeat([gpu(16000)], [])
    job = (await client.post("/v1/jobs", headers=user, json=add_sub_job())).json()
    # a serves add_sub from its repository: no cold start elsewhere, a keeps its copy
    assert (await b.heartbeat([gpu(16000)], []))["desired_models"] is None
    assert (await a.heartbeat([gpu(16000)], local))["desired_models"] is None
    waiting = (await client.get(f"/v1/jobs/{job['id']}", headers=user)).json()
    assert "free slot on 1 runner(s)" in waiting["waiting_reason"]
    # with an explicit deployment of another model, a still keeps its own copy
    await push_model(client, user, copy_as("other", tmp_path))
    r = await client.put("/v1/models/other/deployment", headers=user, json={"min_replicas": 1})
    assert r.status_code == 200, r.text
    answer = await a.heartbeat([gpu(16000)], local)
    assert [(m["version"], m["managed"]) for m in add_sub_of(answer)] == [("1", False)]


@pytest.mark.parametrize("implicit_replicas", [0])
async def test_implicit_deployments_can_be_turned_off(
    client: httpx.AsyncClient, auth_headers: TokenFor
) -> None:
    admin = await auth_headers("admin", "default")
    user = await auth_headers("user", "acme")
    await push_model(client, user)
    assert_error(await client.get(URL, headers=user), 404, "not_found")
    a = await register(client, admin, "a", "eu-west-1")
    await a.heartbeat([gpu(16000)], [])
    job = (await client.post("/v1/jobs", headers=user, json=add_sub_job())).json()
    waiting = (await client.get(f"/v1/jobs/{job['id']}", headers=user)).json()
    assert "has no deployment" in waiting["waiting_reason"]
    assert "gpufleet models deploy" in waiting["waiting_reason"]


async def test_a_lease_poll_ends_when_its_runner_reports_a_model_ready(
    client: httpx.AsyncClient, auth_headers: TokenFor, services: Services
) -> None:
    """A cold start: the runner's long poll, asked before the new model was READY, answers
    (empty) as soon as the heartbeat reports it, so the runner asks again offering it."""
    import asyncio
    import time

    admin = await auth_headers("admin", "default")
    user = await auth_headers("user", "acme")
    await push_model(client, user)
    a = await register(client, admin, "a", "eu-west-1")
    await a.heartbeat([gpu(16000)], [])
    body = {"models": [{"name": "add_sub", "version": "1"}], "max_jobs": 1, "wait_s": 10}
    looked = returned(services.jobs, "_lease_once")
    poll = asyncio.create_task(a.post("lease", body))
    await asyncio.wait_for(looked.wait(), 10)  # found nothing to offer: the poll waits
    assert not poll.done()
    start = time.monotonic()
    await a.heartbeat([gpu(16000)], [{"name": "add_sub", "version": "1", "state": "READY"}])
    r = await asyncio.wait_for(poll, 5)
    assert r.status_code == 200 and r.json()["jobs"] == []
    assert time.monotonic() - start < 3


@pytest.mark.parametrize("store_kind", STORE_KINDS)
async def test_the_submits_request_id_travels_with_the_job_to_its_runner(
    client: httpx.AsyncClient, auth_headers: TokenFor
) -> None:
    admin = await auth_headers("admin", "default")
    user = await auth_headers("user", "acme")
    await push_model(client, user)
    a = await register(client, admin, "a", "eu-west-1")
    loaded = [{"name": "add_sub", "version": "1", "state": "READY"}]
    await a.heartbeat([gpu(16000)], loaded)
    headers = {**user, "X-Request-ID": "trace-77"}
    job = (await client.post("/v1/jobs", headers=headers, json=add_sub_job())).json()
    body = {"models": [{"name": "add_sub", "version": "1"}], "max_jobs": 1}
    r = await a.post("lease", body)
    assert r.status_code == 200, r.text
    [leased] = r.json()["jobs"]
    assert leased["id"] == job["id"] and leased["request_id"] == "trace-77"
