"""Watches Triton: when it dies, keep its logs, restart it with exponential backoff and
reload the models that were loaded. Jobs waiting on it retry once it is ready again."""

from __future__ import annotations

import asyncio
import logging
import random
import time

from runner.backends.base import TritonBackend
from runner.model_manager import ModelManager
from runner.settings import RunnerSettings
from runner.state import RunnerState, wait_event

log = logging.getLogger(__name__)
NOT_READY_LIMIT = 10  # consecutive failed readiness checks of a running server → restart
LOAD_RETRY_S = 5.0  # models that failed to load are tried again this often


class Supervisor:
    """Restart-with-backoff of the Triton backend."""

    def __init__(
        self,
        settings: RunnerSettings,
        backend: TritonBackend,
        models: ModelManager,
        state: RunnerState,
    ) -> None:
        self._settings = settings
        self._backend = backend
        self._models = models
        self._state = state

    async def start(self) -> None:
        """First start (or adoption) of Triton and the model loads."""
        await self._backend.start()
        await self._models.load_all()
        self._state.triton_ready.set()

    async def run(self, stop: asyncio.Event) -> None:
        not_ready = 0
        last_load = time.monotonic()
        while not await wait_event(stop, self._settings.watch_interval_s):
            try:
                if not await self._backend.alive():
                    reason = "Triton exited"
                elif await self._backend.engine.server_ready():
                    not_ready = 0
                    if all(m.state == "READY" for m in self._models.states()):
                        continue
                    if time.monotonic() - last_load >= LOAD_RETRY_S:
                        last_load = time.monotonic()
                        await self._models.load_missing()
                    continue
                else:
                    not_ready += 1
                    if not_ready < NOT_READY_LIMIT:
                        continue
                    reason = "Triton stopped answering"
                not_ready = 0
                await self._recover(stop, reason)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("Triton watch failed", exc_info=True)

    async def _load_with_retries(self, stop: asyncio.Event, tries: int = 5) -> bool:
        for attempt in range(tries):
            if await self._models.load_all():
                return True
            if attempt + 1 < tries:
                await wait_event(stop, 0.5 * 2**attempt)
        return False

    async def _recover(self, stop: asyncio.Event, reason: str) -> None:
        log.error("%s: restarting it", reason)
        self._state.triton_ready.clear()
        self._models.mark_unavailable(reason)
        delay = self._settings.restart_backoff_initial_s
        while not stop.is_set():
            try:
                await self._backend.restart()
                if not await self._load_with_retries(stop):
                    raise RuntimeError("models did not load after the restart")
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._state.last_error = f"triton restart: {exc}"
                log.error("restarting Triton failed: %s; next try in ~%.0fs", exc, delay)
                await wait_event(stop, delay * (0.8 + 0.4 * random.random()))
                delay = min(delay * 2, self._settings.restart_backoff_max_s)
                continue
            log.info("Triton is back; models reloaded")
            self._state.triton_ready.set()
            return
