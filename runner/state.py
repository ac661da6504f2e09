"""State shared by the daemon's loops (one event loop; no locks needed)."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

from gpufleet.wire import GpuInfo, LeasedJob, RunnerConfig


@dataclass
class InflightJob:
    """A leased job being run."""

    job: LeasedJob
    task: asyncio.Task[None]
    started: float = field(default_factory=time.monotonic)
    lease_token: str = ""
    lease_expires_at: str = ""
    cancelled: bool = False  # told by the heartbeat: stop waiting, do not complete
    lease_lost: bool = False  # extend refused (re-leased elsewhere): stop waiting, do not complete


@dataclass
class Counters:
    leased: int = 0
    succeeded: int = 0
    failed: int = 0
    abandoned: int = 0
    conflicts: int = 0
    cancelled: int = 0
    leases_lost: int = 0  # extend refused: the job was re-leased elsewhere (not a cancellation)


@dataclass
class RunnerState:
    """What the loops share and the status server shows."""

    config: RunnerConfig = field(default_factory=RunnerConfig)
    inflight: dict[str, InflightJob] = field(default_factory=dict)
    triton_ready: asyncio.Event = field(default_factory=asyncio.Event)
    slot_freed: asyncio.Event = field(default_factory=asyncio.Event)
    gpus: list[GpuInfo] = field(default_factory=list)
    triton_metrics: dict[str, Any] = field(default_factory=dict)
    counters: Counters = field(default_factory=Counters)
    last_heartbeat_at: float | None = None
    last_error: str | None = None
    stopping: bool = False
    dispatch_inflight: int = 0  # synchronous requests from the dispatch channel (slots)
    started_at: float = field(default_factory=time.time)


async def wait_event(event: asyncio.Event, timeout_s: float) -> bool:
    """Wait for ``event`` at most ``timeout_s``; True when it is set."""
    if event.is_set():
        return True
    try:
        await asyncio.wait_for(event.wait(), max(timeout_s, 0.0))
    except TimeoutError:
        return False
    return True
