"""The job loop against a fake control plane (a real class behind httpx.MockTransport that
checks signatures) and a fake Triton engine (a real InferenceEngine)."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import httpx
import pytest
from gpufleet.wire import HeartbeatRequest, ModelRef, RunnerConfig
from pydantic import SecretStr

from runner.cp_client import ControlPlaneClient, Unauthorized
from runner.credentials import Credentials, load_credentials, save_credentials
from runner.identity import Identity
from runner.jobloop import JobLoop
from runner.model_manager import ModelManager
from runner.settings import RunnerSettings
from runner.state import RunnerState
from tests.runner.runner_fakes import BASE, FakeControlPlane, FakeEngine, job


class Rig:
    def __init__(self, tmp_path: Path, cp: FakeControlPlane, **config: Any) -> None:
        self.settings = RunnerSettings(
            control_plane_url=BASE,
            join_token="join-token-ok",
            name="t",
            state_dir=tmp_path,
            model_repository=tmp_path / "repo",
        )
        self.cp = cp
        self.client = ControlPlaneClient(BASE, transport=httpx.MockTransport(cp))
        self.identity = Identity(self.settings, self.client)
        self.engine = FakeEngine()
        self.models = ModelManager(self.engine, self.settings.model_repository)
        self.models.ready_refs = lambda: [ModelRef(name="add_sub", version="1")]  # type: ignore[method-assign]
        self.state = RunnerState(config=RunnerConfig(**{"lease_wait_s": 0.0, **config}))
        self.state.triton_ready.set()
        self.loop = JobLoop(self.state, self.client, self.identity, self.engine, self.models)
        self.stop = asyncio.Event()

    async def run_until(self, predicate: Any, timeout: float = 10) -> None:
        task = asyncio.create_task(self.loop.run(self.stop))
        try:
            async with asyncio.timeout(timeout):
                while not predicate():
                    await asyncio.sleep(0.02)
        finally:
            self.stop.set()
            await task
            await self.loop.drain(5)
            await self.client.aclose()


async def test_jobs_run_concurrently_up_to_max_concurrency(tmp_path: Path) -> None:
    cp = FakeControlPlane([job(f"job_{i}") for i in range(7)])
    rig = Rig(tmp_path, cp, max_concurrency=3)
    rig.engine.delay = 0.2
    await rig.run_until(lambda: len(cp.completed) == 7)
    assert rig.engine.max_active == 3
    assert all(lease["max_jobs"] <= 3 for lease in cp.leases)
    done = cp.completed["job_4"]
    assert done["status"] == "SUCCEEDED" and done["lease_token"] == "tok-job_4"
    assert done["outputs"] == [
        {"name": "OUTPUT0", "datatype": "FP32", "shape": [1, 2], "data": [2, 4]}
    ]
    assert cp.registered == ["run_1"]
    assert rig.state.counters.succeeded == 7


async def test_timeout_fails_with_code_timeout(tmp_path: Path) -> None:
    cp = FakeControlPlane([job("job_slow", timeout_s=1)])
    rig = Rig(tmp_path, cp)
    rig.engine.delay = 5
    await rig.run_until(lambda: "job_slow" in cp.completed)
    assert cp.completed["job_slow"]["status"] == "FAILED"
    assert cp.completed["job_slow"]["error"]["code"] == "timeout"


async def test_triton_error_fails_with_its_message(tmp_path: Path) -> None:
    cp = FakeControlPlane([job("job_bad")])
    rig = Rig(tmp_path, cp)
    rig.engine.error = "[StatusCode.INVALID_ARGUMENT] unexpected shape for input 'INPUT0'"
    await rig.run_until(lambda: "job_bad" in cp.completed)
    err = cp.completed["job_bad"]["error"]
    assert (err["code"], err["message"]) == ("triton_error", rig.engine.error)


async def test_transient_errors_are_retried_until_triton_is_back(tmp_path: Path) -> None:
    cp = FakeControlPlane([job("job_retry")])
    rig = Rig(tmp_path, cp)
    rig.engine.transient_failures = 3
    await rig.run_until(lambda: "job_retry" in cp.completed)
    assert cp.completed["job_retry"]["status"] == "SUCCEEDED"
    assert rig.engine.calls == 4


async def test_conflict_on_complete_is_dropped(tmp_path: Path) -> None:
    cp = FakeControlPlane([job("job_taken"), job("job_ok")])
    cp.conflict_on_complete.add("job_taken")
    rig = Rig(tmp_path, cp)
    await rig.run_until(lambda: "job_ok" in cp.completed and rig.state.counters.conflicts == 1)
    assert "job_taken" not in cp.completed
    assert not rig.state.inflight


async def test_cancelled_job_is_not_completed(tmp_path: Path) -> None:
    cp = FakeControlPlane([job("job_cancel")])
    rig = Rig(tmp_path, cp)
    rig.engine.delay = 5

    def started() -> bool:
        if "job_cancel" in rig.state.inflight and rig.engine.active:
            rig.loop.cancel(["job_cancel"])
            return True
        return False

    await rig.run_until(started)
    await asyncio.sleep(0.1)
    assert not rig.state.inflight
    assert "job_cancel" not in cp.completed
    assert rig.state.counters.cancelled == 1


async def test_short_lease_is_extended(tmp_path: Path) -> None:
    cp = FakeControlPlane([job("job_long", expires="2000-01-01T00:00:00Z")])
    rig = Rig(tmp_path, cp)
    rig.engine.delay = 1.2
    await rig.run_until(lambda: "job_long" in cp.completed)
    assert cp.extended and set(cp.extended) == {"job_long"}


async def test_acceptance_rate_zero_and_drain_take_nothing(tmp_path: Path) -> None:
    for config in ({"acceptance_rate": 0.0}, {"drain": True}):
        cp = FakeControlPlane([job("job_x")])
        rig = Rig(tmp_path, cp, **config)
        task = asyncio.create_task(rig.loop.run(rig.stop))
        await asyncio.sleep(0.5)
        rig.stop.set()
        await task
        assert cp.leases == [] and cp.completed == {}
        await rig.client.aclose()


async def test_revoked_credentials_are_deleted_and_runner_registers_again(tmp_path: Path) -> None:
    cp = FakeControlPlane([job("job_after")])
    cp.revoked.add("run_old")
    rig = Rig(tmp_path, cp)
    save_credentials(rig.settings.credentials_file, Credentials("run_old", "old-secret", BASE))
    await rig.run_until(lambda: "job_after" in cp.completed)
    assert cp.registered == ["run_1"]
    assert load_credentials(rig.settings.credentials_file) == Credentials(
        "run_1", "secret-run_1", BASE
    )


async def test_drain_abandons_jobs_after_grace(tmp_path: Path) -> None:
    cp = FakeControlPlane([job("job_stuck")])
    rig = Rig(tmp_path, cp)
    rig.engine.delay = 30
    task = asyncio.create_task(rig.loop.run(rig.stop))
    async with asyncio.timeout(5):
        while not rig.engine.active:
            await asyncio.sleep(0.02)
    rig.stop.set()
    await task
    await rig.loop.drain(0.3)
    assert not rig.state.inflight
    assert cp.completed == {}  # left to lease expiry: the control plane requeues it
    assert rig.state.counters.abandoned == 1
    await rig.client.aclose()


class Waits:
    """``Identity``'s ``wait``: records each wait it asks for (seconds, who had registered by
    then) and returns at once; the ``stop_after``-th wait sets the shutdown event."""

    def __init__(self, cp: FakeControlPlane, stop_after: int | None = None) -> None:
        self.cp = cp
        self.stop_after = stop_after
        self.asked: list[tuple[float, list[str]]] = []

    async def __call__(self, shutdown: asyncio.Event, seconds: float) -> bool:
        self.asked.append((seconds, list(self.cp.registered)))
        if self.stop_after is not None and len(self.asked) >= self.stop_after:
            shutdown.set()
        return shutdown.is_set()


@pytest.mark.parametrize("token", ["join-token-bad"])
async def test_refused_join_token_retries_slowly_until_stopped(tmp_path: Path, token: str) -> None:
    cp = FakeControlPlane()
    rig = Rig(tmp_path, cp)
    rig.settings = rig.settings.model_copy(
        update={"join_token": SecretStr(token), "register_retry_s": 60}
    )
    waits = Waits(cp, stop_after=1)
    rig.identity = Identity(rig.settings, rig.client, wait=waits)
    assert await rig.identity.ensure(asyncio.Event()) is None  # stopped during its first wait
    [(seconds, registered)] = waits.asked
    assert 48 <= seconds <= 72 and registered == []  # waiting ~60 s before the next try
    await rig.client.aclose()


async def test_fresh_credentials_rejected_again_back_off_instead_of_looping(
    tmp_path: Path,
) -> None:
    cp = FakeControlPlane()
    rig = Rig(tmp_path, cp)
    rig.settings = rig.settings.model_copy(update={"join_token": SecretStr("join-token-ok")})
    waits = Waits(cp)
    rig.identity = Identity(rig.settings, rig.client, wait=waits)
    stop = asyncio.Event()
    first = await rig.identity.ensure(stop)
    assert first is not None and cp.registered == ["run_1"] and waits.asked == []
    # Rejected right after registering (e.g. this host's clock is off): not a revocation.
    await rig.identity.invalidate(first)
    second = await rig.identity.ensure(stop)
    assert second is not None and cp.registered == ["run_1", "run_2"]
    [(seconds, registered)] = waits.asked
    assert 0.8 <= seconds <= 1.2 and registered == ["run_1"]  # backed off (~1 s), not looping
    await rig.identity.invalidate(second)
    waits.stop_after = 2
    assert await rig.identity.ensure(stop) is None  # stopped during the wait
    seconds, registered = waits.asked[1]
    assert 1.6 <= seconds <= 2.4  # the delay doubled (~2 s)
    assert registered == ["run_1", "run_2"] == cp.registered
    await rig.client.aclose()


async def test_a_lost_lease_is_counted_apart_from_cancellations(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """409 on extend: the job was re-leased elsewhere. The runner stops waiting on it and
    sends nothing, and counts it as ``leases_lost``, not as a cancellation."""
    cp = FakeControlPlane([job("job_lost", expires="2000-01-01T00:00:00Z")])
    cp.conflict_on_extend.add("job_lost")
    rig = Rig(tmp_path, cp)
    rig.engine.delay = 5
    await rig.run_until(lambda: rig.state.counters.leases_lost == 1)
    await asyncio.sleep(0.1)
    assert "job_lost" not in cp.completed and not rig.state.inflight
    assert rig.state.counters.cancelled == 0
    assert not any("cancelled" in r.getMessage() for r in caplog.records)


async def test_a_reset_store_is_reported_plainly_not_as_clock_skew(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The control plane's store was wiped: it knows neither the runner nor its join token.
    The runner says so ("credentials refused: re-register with a new join token") and never
    blames the clock, also when fresh credentials are refused right after registering."""
    cp = FakeControlPlane([job("job_x")])
    rig = Rig(tmp_path, cp)
    stop = asyncio.Event()
    first = await rig.identity.ensure(stop)
    assert first is not None
    cp.secrets.clear()  # the store lost every runner
    with pytest.raises(Unauthorized, match="unknown to this control plane"):
        await rig.client.heartbeat(HeartbeatRequest())
    await rig.identity.invalidate(first)
    second = await rig.identity.ensure(stop)  # the join token still works here
    assert second is not None
    cp.secrets.clear()
    with pytest.raises(Unauthorized, match="unknown to this control plane"):
        await rig.client.heartbeat(HeartbeatRequest())
    await rig.identity.invalidate(second)
    task = asyncio.create_task(rig.identity.ensure(stop))
    await asyncio.sleep(0.1)
    stop.set()
    await task
    await rig.client.aclose()
    messages = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert any("credentials refused: re-register with a new join token" in m for m in messages)
    assert any("store reset" in m for m in messages), messages
    assert not any("clock" in m for m in messages), messages
