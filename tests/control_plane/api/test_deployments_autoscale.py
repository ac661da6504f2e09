"""Autoscaling on the real queue: a deployment scales from 0 to max and back on queue wait."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.control_plane.api.conftest import TokenFor
from tests.control_plane.api.helpers import add_sub_job, push_model
from tests.control_plane.api.test_deployments import gpu, register


@pytest.fixture
def settings(settings: Any) -> Any:
    # decide on every heartbeat and scale at once: no wait threshold, idle time or cooldown
    return settings.model_copy(
        update={
            "placement_interval_s": 0.001,
            "scale_up_wait_s": 0.0,
            "scale_down_idle_s": 0.0,
            "scale_cooldown_s": 0.0,
        }
    )


async def test_autoscaling_follows_the_real_queue(
    client: httpx.AsyncClient, auth_headers: TokenFor
) -> None:
    admin = await auth_headers("admin", "default")
    user = await auth_headers("user", "acme")
    await push_model(client, user)
    a = await register(client, admin, "a", "eu-west-1")
    b = await register(client, admin, "b", "eu-west-1")
    for r in (a, b):
        await r.heartbeat([gpu(16000)], [])
    url = "/v1/models/add_sub/deployment"
    r = await client.put(url, headers=user, json={"min_replicas": 0, "max_replicas": 2})
    assert r.json()["replicas"] == 0
    assert (await a.heartbeat([gpu(16000)], []))["desired_models"] == []

    job = (await client.post("/v1/jobs", headers=user, json=add_sub_job())).json()
    # the submit decides at once: cold start, one replica (no wait for the next heartbeat)
    view = (await client.get(f"/v1/jobs/{job['id']}", headers=user)).json()
    assert view["waiting_reason"].startswith("loading:"), view
    assert (await client.get(url, headers=user)).json()["replicas"] == 1
    await a.heartbeat([gpu(16000)], [])  # the job still waits, longer: one more
    body = (await client.get(url, headers=user)).json()
    assert body["replicas"] == 2
    assert sorted(o["runner_id"] for o in body["observed"]) == sorted([a.id, b.id])

    r = await client.post(f"/v1/jobs/{job['id']}/cancel", headers=user)
    assert r.status_code == 200
    await a.heartbeat([gpu(16000)], [])  # idle: one fewer per decision, down to min_replicas
    assert (await client.get(url, headers=user)).json()["replicas"] == 1
    await a.heartbeat([gpu(16000)], [])
    assert (await client.get(url, headers=user)).json()["replicas"] == 0
    assert (await b.heartbeat([gpu(16000)], []))["desired_models"] == []
