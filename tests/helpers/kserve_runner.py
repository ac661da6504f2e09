"""Helpers for the KServe v2 endpoint tests.

- ``AsyncRunner``: plays a runner over an ``httpx.AsyncClient`` (so it works against the app
  in process through ``ASGITransport``, where the thread-based ``FakeRunner`` cannot): it
  registers with a join token and leases / completes with real HMAC-signed calls, computing
  outputs in Python (``add_sub`` by default).
- ``with_kserve_routes(app)``: the app with the /v2 routes mounted. ``create_app`` lists
  them once ``control_plane.app.routes()`` includes ``kserve.ROUTES``; until then the routes
  are appended here so these tests exercise them (``test_kserve_routes_are_wired`` fails
  meanwhile, on purpose).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import httpx
from gpufleet.wire import LeasedJob, LeaseResponse
from starlette.applications import Starlette

from control_plane.api import kserve
from control_plane.api.openapi import build_openapi
from control_plane.api.routes_system import package_version
from tests.control_plane.api.helpers import signed_post
from tests.helpers.fake_runner import GPU, Compute, add_sub, complete_body


def with_kserve_routes(app: Starlette) -> Starlette:
    """``app``, with the /v2 routes appended if ``create_app`` does not list them yet."""
    paths = {getattr(r, "path", None) for r in app.routes}
    if "/v2/models/{model}/infer" not in paths:
        app.router.routes.extend(kserve.ROUTES)
        app.state.openapi = build_openapi(list(app.routes), package_version())
    return app


async def bearer(client: httpx.AsyncClient, api_key: str) -> dict[str, str]:
    """The Authorization header of a fresh access token for ``api_key``."""
    r = await client.post("/v1/auth/token", json={"api_key": api_key})
    assert r.status_code == 200, r.text
    return {"Authorization": f"Bearer {r.json()['access_token']}"}


class AsyncRunner:
    """A signed runner on an async client; ``async with runner.serving():`` runs its loop."""

    def __init__(self, client: httpx.AsyncClient, runner_id: str, secret: str) -> None:
        self.client = client
        self.runner_id = runner_id
        self.secret = secret
        self.compute: Compute = add_sub
        self.delay_s = 0.0  # how long each leased job "runs" before it is completed
        self.completed: list[str] = []
        self.leased: list[LeasedJob] = []

    @classmethod
    async def register(cls, client: httpx.AsyncClient, admin: dict[str, str]) -> AsyncRunner:
        r = await client.post("/v1/admin/join-tokens", headers=admin, json={})
        assert r.status_code in (200, 201), r.text
        body = {"join_token": r.json()["join_token"], "name": "kserve-test", "gpus": [GPU]}
        r = await client.post("/v1/runners/register", json=body)
        assert r.status_code in (200, 201), r.text
        return cls(client, r.json()["runner_id"], r.json()["secret"])

    async def run_once(self, wait_s: float = 1.0) -> int:
        """Lease (long poll) and complete what comes; returns how many jobs."""
        base = f"/v1/runners/{self.runner_id}"
        body = {"models": [{"name": "add_sub", "version": "1"}], "max_jobs": 4, "wait_s": wait_s}
        r = await signed_post(self.client, self.runner_id, self.secret, f"{base}/lease", body)
        assert r.status_code == 200, r.text
        jobs = LeaseResponse.model_validate(r.json()).jobs
        self.leased.extend(jobs)
        for job in jobs:
            await asyncio.sleep(self.delay_s)
            done = complete_body(job, self.compute)
            path = f"{base}/jobs/{job.id}/complete"
            # Recorded before the call: the control plane may answer the waiting client
            # before this coroutine resumes after the complete call returns.
            self.completed.append(job.id)
            r = await signed_post(self.client, self.runner_id, self.secret, path, done)
            assert r.status_code == 200, r.text
        return len(jobs)

    async def _loop(self) -> None:
        while True:
            await self.run_once()

    @contextlib.asynccontextmanager
    async def serving(self) -> AsyncIterator[AsyncRunner]:
        """Lease and complete jobs in a background task for the duration of the block."""
        task = asyncio.create_task(self._loop())
        try:
            yield self
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
