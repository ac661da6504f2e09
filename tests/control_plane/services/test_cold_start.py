"""Cold starts: the job's run fields from the runner's timings, the control plane's ``wake``
frames after a placement change, and the runner heartbeating at once when woken or when a
model's state changes."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

from gpufleet.wire import ModelState

from control_plane.services.dispatch import Channel, Dispatcher
from control_plane.services.jobs import run_timings
from control_plane.storage.protocols import JobRecord
from runner.heartbeat import Heartbeat
from runner.state import RunnerState


def job(created_at: float = 100.0) -> JobRecord:
    return JobRecord(
        id="job_1",
        tenant="t",
        model="m",
        model_version="1",
        pinned=False,
        status="RUNNING",
        priority=0,
        created_at=created_at,
        timeout_s=60,
        ttl_s=600,
        max_attempts=1,
        region=None,
        request={},
    )


def test_run_ms_is_the_models_time_and_the_rest_is_the_runners() -> None:
    timings = {"triton_ms": 40.4, "total_ms": 45.0, "load_ms": 1400.2, "loaded_at": 101.5}
    run_ms, info = run_timings(job(created_at=100.0), timings, wall_ms=60.0)
    assert run_ms == 40
    assert info == {"runner_ms": 20, "cold_start": True, "load_ms": 1400}


def test_a_job_submitted_after_the_load_is_warm() -> None:
    timings = {"triton_ms": 5.0, "load_ms": 1400.0, "loaded_at": 99.0}
    run_ms, info = run_timings(job(created_at=100.0), timings, wall_ms=9.0)
    assert run_ms == 5 and info == {"runner_ms": 4, "cold_start": False}


def test_without_timings_run_ms_is_the_wall_time() -> None:
    assert run_timings(job(), None, wall_ms=75.9) == (75, None)
    assert run_timings(job(), {"total_ms": 3.0}, wall_ms=75.9) == (75, None)
    # a runner that does not report its loads: no claim either way
    assert run_timings(job(), {"triton_ms": 3.0}, wall_ms=5.0) == (3, {"runner_ms": 2})


async def test_wake_all_reaches_every_channel_from_any_thread() -> None:
    sent: list[tuple[str, str | bytes]] = []
    dispatcher = Dispatcher()

    def channel(name: str) -> Channel:
        async def send(frame: str | bytes) -> None:
            sent.append((name, frame))

        return Channel(runner_id=name, send=send)

    dispatcher.wake_all()  # nobody attached yet: nothing to do, no error
    for name in ("a", "b"):
        dispatcher.attach(channel(name))
    thread = threading.Thread(target=dispatcher.wake_all)  # as a threadpool handler calls it
    thread.start()
    thread.join()
    for _ in range(50):
        if len(sent) == 2:
            break
        await asyncio.sleep(0.01)
    assert sorted(sent) == [("a", '{"type":"wake"}'), ("b", '{"type":"wake"}')]


class _Models:
    def __init__(self) -> None:
        self.list: list[ModelState] = []

    def states(self) -> list[ModelState]:
        return self.list


def _heartbeat(models: _Models) -> Heartbeat:
    none: Any = None
    return Heartbeat(RunnerState(), none, none, none, none, models, none)  # type: ignore[arg-type]


async def test_heartbeat_pause_ends_when_woken() -> None:
    hb = _heartbeat(_Models())
    hb._sent_models = hb._models_key()
    stop = asyncio.Event()
    asyncio.get_running_loop().call_later(0.05, hb.wake)
    start = time.monotonic()
    await hb._pause(stop, 10.0)
    assert time.monotonic() - start < 2.0


async def test_heartbeat_pause_ends_when_a_model_becomes_ready() -> None:
    models = _Models()
    hb = _heartbeat(models)
    hb._sent_models = hb._models_key()

    def ready() -> None:
        models.list = [ModelState(name="m", version="1", state="READY")]

    asyncio.get_running_loop().call_later(0.05, ready)
    start = time.monotonic()
    await hb._pause(asyncio.Event(), 10.0)
    assert time.monotonic() - start < 2.0
    # nothing changed: the whole interval
    hb._sent_models = hb._models_key()
    start = time.monotonic()
    await hb._pause(asyncio.Event(), 0.3)
    assert time.monotonic() - start >= 0.29
