"""The heartbeat loop: GPUs, models, Triton's metrics and running jobs up; config and
cancellations down (the runner is a dumb terminal: its runtime settings come from here)."""

from __future__ import annotations

import asyncio
import logging
import time

from gpufleet.wire import HeartbeatRequest, HeartbeatResponse

from runner.backends.base import InferenceEngine
from runner.backoff import Backoff
from runner.cp_client import ControlPlaneClient, ControlPlaneError, Unauthorized
from runner.gpu import GpuReader
from runner.identity import Identity
from runner.jobloop import JobLoop
from runner.model_manager import ModelManager
from runner.state import RunnerState, wait_event

log = logging.getLogger(__name__)
MODEL_WATCH_S = 0.1  # how often a waiting heartbeat looks for model state changes


class Heartbeat:
    """Sends a heartbeat every ``config.heartbeat_interval_s`` and applies the answer."""

    def __init__(
        self,
        state: RunnerState,
        client: ControlPlaneClient,
        identity: Identity,
        gpus: GpuReader,
        engine: InferenceEngine,
        models: ModelManager,
        jobs: JobLoop,
        backend_info: dict[str, object] | None = None,
    ) -> None:
        self._state = state
        self._client = client
        self._identity = identity
        self._gpus = gpus
        self._engine = engine
        self._models = models
        self._jobs = jobs
        self._backend_info = backend_info or {}
        self._rtt_ms: float | None = None
        self._wake = asyncio.Event()
        self._sent_models: object = None  # the model states the last heartbeat carried

    def wake(self) -> None:
        """Heartbeat now (the control plane's placement changed: a ``wake`` frame)."""
        self._wake.set()

    def _models_key(self) -> object:
        return sorted((s.name, s.version, s.state) for s in self._models.states())

    async def _pause(self, stop: asyncio.Event, wait_s: float) -> None:
        """Until the next heartbeat: ``wait_s``, or sooner when woken or when a model's state
        changed (a version READY is reported at once: leases of it wait for that report)."""
        deadline = time.monotonic() + wait_s
        while not stop.is_set() and not self._wake.is_set():
            left = deadline - time.monotonic()
            if left <= 0 or self._models_key() != self._sent_models:
                return
            await wait_event(self._wake, min(left, MODEL_WATCH_S))

    async def build(self) -> HeartbeatRequest:
        """Readings taken now (NVML in a thread; Triton's metrics scraped)."""
        self._wake.clear()
        self._sent_models = self._models_key()
        self._state.gpus = await asyncio.to_thread(self._gpus.read)
        triton = await self._engine.metrics()
        self._state.triton_metrics = triton
        return HeartbeatRequest(
            gpus=self._state.gpus,
            models=self._models.states(),
            triton={**triton, "ready": self._state.triton_ready.is_set(), **self._backend_info},
            running_jobs=self._jobs.running_ids(),
            rtt_ms=self._rtt_ms,  # of the previous heartbeat (None before the first)
        )

    def apply(self, resp: HeartbeatResponse) -> None:
        """Take the config and a rotated secret, stop waiting on cancelled jobs, hand the
        desired models on."""
        if resp.new_secret:
            self._identity.adopt_secret(resp.new_secret)
        if resp.config != self._state.config:
            log.info("runtime config from the control plane: %s", resp.config.model_dump())
            self._state.config = resp.config
            self._state.slot_freed.set()  # max_concurrency may have grown
        if resp.cancel_jobs:
            self._jobs.cancel(resp.cancel_jobs)
        self._models.set_desired(resp.desired_models)  # None: serve the local repository

    async def beat_once(self) -> HeartbeatResponse:
        req = await self.build()
        sent = time.monotonic()
        resp = await self._client.heartbeat(req)
        # The round trip of this call (network and the control plane's handling), reported
        # with the next heartbeat: the control plane ranks regions by it (docs/regions.md).
        self._rtt_ms = round((time.monotonic() - sent) * 1000, 1)
        self._state.last_heartbeat_at = time.time()
        self.apply(resp)
        return resp

    async def run(self, stop: asyncio.Event) -> None:
        """Beat until ``stop`` is set."""
        backoff = Backoff(1.0, 5.0)  # back within seconds of an outage
        failures = 0
        while not stop.is_set():
            creds = None
            try:
                creds = await self._identity.ensure(stop)
                if creds is None:
                    return
                await self.beat_once()
                if failures:
                    log.info("control plane answers again (after %d failed heartbeats)", failures)
                failures = 0
                backoff.reset()
                wait = self._state.config.heartbeat_interval_s
            except asyncio.CancelledError:
                raise
            except Unauthorized:
                await self._identity.invalidate(creds)
                continue
            except Exception as exc:
                self._state.last_error = f"heartbeat: {exc}"
                failures += 1
                # the control plane down or unreachable: one line per attempt, no traceback
                log.warning(
                    "heartbeat failed (attempt %d): %s; retry in ~%.1fs",
                    failures,
                    exc,
                    backoff.delay_s,
                    exc_info=not isinstance(exc, ControlPlaneError),
                )
                wait = backoff.next_wait()
            await self._pause(stop, wait)
