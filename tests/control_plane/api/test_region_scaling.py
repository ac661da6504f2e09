"""Per-region scale-up on the real queue (docs/regions.md): jobs that prefer a region with no
replica of their model get one placed there once they waited ``scale_up_wait_s``."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.control_plane.api.conftest import TokenFor
from tests.control_plane.api.helpers import add_sub_job, push_model
from tests.control_plane.api.test_deployments import gpu, register
from tests.helpers.clock import FakeClock


@pytest.fixture
def settings(settings: Any) -> Any:
    # decide on every heartbeat; a short wait threshold; a cooldown long enough that only the
    # regional scale-up can add a replica here
    return settings.model_copy(
        update={
            "placement_interval_s": 0.001,
            "scale_up_wait_s": 0.3,
            "scale_cooldown_s": 600.0,
            "implicit_max_replicas": 0,
        }
    )


@pytest.mark.parametrize("now", ["fake"], indirect=True)
async def test_a_busy_region_gets_its_own_replica(
    client: httpx.AsyncClient, auth_headers: TokenFor, now: FakeClock
) -> None:
    """Jobs preferring a region without a replica scale that region up (docs/regions.md),
    rather than wait to spill to the region that has one."""
    admin = await auth_headers("admin", "default")
    user = await auth_headers("user", "acme")
    await push_model(client, user)
    eu = await register(client, admin, "eu", "eu-west-1")
    us = await register(client, admin, "us", "us-east-1")
    await us.heartbeat([gpu(16000, 8000)], [])  # less free memory: the first replica goes to eu
    await eu.heartbeat([gpu(16000)], [])
    url = "/v1/models/add_sub/deployment"
    r = await client.put(url, headers=user, json={"min_replicas": 1, "max_replicas": 3})
    assert [o["runner_id"] for o in r.json()["observed"]] == [eu.id]
    ids = [
        (await client.post("/v1/jobs", headers=user, json=add_sub_job(region="us-east-1"))).json()
        for _ in range(3)
    ]
    assert all(j["status"] == "QUEUED" for j in ids)
    assert (await us.heartbeat([gpu(16000, 8000)], []))["desired_models"] == []  # not yet
    now.advance(0.4)  # past scale_up_wait_s
    answer = await us.heartbeat([gpu(16000, 8000)], [])
    assert [m["name"] for m in answer["desired_models"]] == ["add_sub"]
    body = (await client.get(url, headers=user)).json()
    assert body["replicas"] == 2
    assert sorted(o["runner_id"] for o in body["observed"]) == sorted([eu.id, us.id])
