"""Item 13, the runner's side: the real runner client and identity against the real control
plane (in process): a heartbeat answer carries the new secret, the runner stores it and signs
with it, and the control plane takes that as the confirmation."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from gpufleet.wire import HeartbeatRequest, HeartbeatResponse, RunnerConfig

from control_plane.api.context import Services
from control_plane.composition import build_services
from control_plane.storage.stores import Stores
from runner.cp_client import ControlPlaneClient
from runner.heartbeat import Heartbeat
from runner.identity import Identity
from runner.settings import RunnerSettings
from runner.state import RunnerState
from tests.control_plane.api.conftest import TokenFor
from tests.helpers.clock import FakeClock

BASE = "http://cp.test"


@pytest.fixture
def settings(settings: Any) -> Any:
    return settings.model_copy(
        update={"runner_secret_rotation_s": 1, "runner_secret_overlap_s": 60}
    )


@pytest.fixture
def now() -> FakeClock:
    """The control plane's clock in this file: moved by the tests, never slept through."""
    return FakeClock()


@pytest.fixture
def services(settings: Any, stores: Stores, now: FakeClock) -> Services:
    return build_services(settings, stores, now=now)


class _Models:
    def set_desired(self, desired: Any) -> None:
        self.desired = desired


class _Jobs:
    def cancel(self, ids: list[str]) -> None:
        self.cancelled = ids


async def test_runner_adopts_and_confirms_a_rotated_secret(
    app: Any, client: httpx.AsyncClient, auth_headers: TokenFor, tmp_path: Path, now: FakeClock
) -> None:
    admin = await auth_headers("admin", "default")
    join = (await client.post("/v1/admin/join-tokens", headers=admin, json={})).json()
    rs = RunnerSettings(
        control_plane_url=BASE,
        join_token=join["join_token"],
        name="gpu-1",
        backend="mock",
        state_dir=tmp_path,
        status_port=0,
    )
    cp = ControlPlaneClient(BASE, transport=httpx.ASGITransport(app=app))
    identity = Identity(rs, cp)
    creds = await identity.ensure(asyncio.Event(), first_try=True)
    assert creds is not None
    beat = Heartbeat(RunnerState(), cp, identity, None, None, _Models(), _Jobs())  # type: ignore[arg-type]

    assert (await cp.heartbeat(HeartbeatRequest())).new_secret is None
    now.advance(1.1)  # the secret is now older than runner_secret_rotation_s
    resp = await cp.heartbeat(HeartbeatRequest())
    assert resp.new_secret and resp.new_secret != creds.secret
    beat.apply(resp)
    assert cp.credentials is not None and cp.credentials.secret == resp.new_secret
    stored = json.loads(rs.credentials_file.read_text())
    assert stored["secret"] == resp.new_secret  # a restart keeps the new secret

    # The next signed call uses the new secret: the control plane promotes it.
    after = await cp.heartbeat(HeartbeatRequest())
    assert isinstance(after, HeartbeatResponse) and after.new_secret is None
    view = (await client.get("/v1/runners", headers=admin)).json()["runners"][0]
    assert view["secret_rotation_pending"] is False
    # An answer without a new secret changes nothing.
    beat.apply(HeartbeatResponse(config=RunnerConfig()))
    assert cp.credentials.secret == resp.new_secret
    await cp.aclose()
