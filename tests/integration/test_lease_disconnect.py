"""A lease long poll whose runner hung up (killed) claims nothing: on a real socket, the
control plane stops polling once the client has disconnected, so a job submitted afterwards
is not leased to nobody (which cost an attempt and a lease expiry)."""

from __future__ import annotations

import asyncio
import contextlib

import httpx

from control_plane.composition import Services
from tests.control_plane.api.helpers import add_sub_job, push_model, signed_post

LEASE = {"models": [{"name": "add_sub", "version": "1"}], "max_jobs": 4, "wait_s": 10}


async def test_abandoned_long_poll_claims_nothing(
    live_server: str, live_services: Services
) -> None:
    admin_key = live_services.auth.issue_api_key("default", "admin", "t").api_key
    async with httpx.AsyncClient(base_url=live_server, timeout=30) as c:
        tok = (await c.post("/v1/auth/token", json={"api_key": admin_key})).json()["access_token"]
        admin = {"Authorization": f"Bearer {tok}"}
        await push_model(c, admin)
        join = (await c.post("/v1/admin/join-tokens", headers=admin, json={})).json()["join_token"]
        reg = (await c.post("/v1/runners/register", json={"join_token": join, "name": "r"})).json()
        rid, secret = reg["runner_id"], reg["secret"]
        path = f"/v1/runners/{rid}/lease"

        # the "killed" runner: a long poll on its own connection, then the connection closes
        gone = httpx.AsyncClient(base_url=live_server, timeout=30)
        poll = asyncio.create_task(signed_post(gone, rid, secret, path, LEASE))
        await asyncio.sleep(0.5)
        poll.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await poll
        await gone.aclose()
        await asyncio.sleep(0.5)  # the server notices the hang-up

        job_id = (await c.post("/v1/jobs", headers=admin, json=add_sub_job())).json()["id"]
        await asyncio.sleep(1.5)  # several poll intervals of the abandoned poll's wait_s
        job = (await c.get(f"/v1/jobs/{job_id}", headers=admin)).json()
        assert (job["status"], job["attempts"]) == ("QUEUED", 0), job

        r = await signed_post(c, rid, secret, path, {**LEASE, "wait_s": 0})
        (leased,) = r.json()["jobs"]
        assert leased["id"] == job_id and leased["attempt"] == 1
