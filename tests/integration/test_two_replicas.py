"""Two ``python -m control_plane serve`` processes on one set of tables behave as one."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.control_plane.api.helpers import add_sub_job, add_sub_outputs, push_model, signed_post


@pytest.fixture
def store_kind() -> str:
    """Replicas share DynamoDB + S3 (moto); the embedded store is one process's."""
    return "dynamodb"


async def test_submit_on_one_lease_and_complete_on_the_other(replicas: Any, tmp_path: Path) -> None:
    key_file = tmp_path / "admin.key"
    a = replicas("--admin-key-file", str(key_file))
    b = replicas()
    assert key_file.stat().st_mode & 0o777 == 0o600
    admin_key = key_file.read_text().strip()

    async with (
        httpx.AsyncClient(base_url=a.url, timeout=40) as ca,
        httpx.AsyncClient(base_url=b.url, timeout=40) as cb,
    ):
        pair = (await ca.post("/v1/auth/token", json={"api_key": admin_key})).json()
        admin = {"Authorization": f"Bearer {pair['access_token']}"}
        # The signing key was generated once and is shared through the tables.
        assert (await cb.get("/v1/runners", headers=admin)).status_code == 200
        # A refresh token from one replica rotates on the other.
        assert (
            await cb.post("/v1/auth/refresh", json={"refresh_token": pair["refresh_token"]})
        ).status_code == 200

        await push_model(ca, admin)
        join = (await ca.post("/v1/admin/join-tokens", headers=admin, json={})).json()["join_token"]
        reg = (await cb.post("/v1/runners/register", json={"join_token": join, "name": "r"})).json()
        rid, secret = reg["runner_id"], reg["secret"]

        job_id = (await ca.post("/v1/jobs", headers=admin, json=add_sub_job())).json()["id"]
        waiter = asyncio.create_task(ca.get(f"/v1/jobs/{job_id}?wait_s=25", headers=admin))

        lease = await signed_post(
            cb,
            rid,
            secret,
            f"/v1/runners/{rid}/lease",
            {"models": [{"name": "add_sub", "version": "1"}], "wait_s": 10},
        )
        assert lease.status_code == 200, lease.text
        (leased,) = lease.json()["jobs"]
        assert leased["id"] == job_id
        assert not waiter.done()
        done = await signed_post(
            cb,
            rid,
            secret,
            f"/v1/runners/{rid}/jobs/{job_id}/complete",
            {
                "lease_token": leased["lease_token"],
                "status": "SUCCEEDED",
                "outputs": add_sub_outputs(),
            },
        )
        assert done.status_code == 200, done.text

        r = await asyncio.wait_for(waiter, 30)
        assert r.status_code == 200, r.text
        assert r.json()["status"] == "SUCCEEDED"
        assert r.json()["outputs"][1]["data"] == [0, 1, 2, 3]

    # SIGTERM: both exit cleanly.
    assert a.stop() == 0
    assert b.stop() == 0
