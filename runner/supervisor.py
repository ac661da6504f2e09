"""Watches Triton: when it dies, keep its logs, restart it with exponential backoff and
reload the models that were loaded. Jobs waiting on it retry once it is ready again."""

from __future__ import annotations

import asyncio
import logging
import random

from runner.backends.base import TritonBackend
from runner.model_manager import ModelManager
from runner.settings import RunnerSettings
from runner.state import RunnerState, wait_event

log = logging.getLogger(__name__)
NOT_READY_LIMIT = 10  # consecutive failed readiness checks of a running server → restart


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
        while not await wait_event(stop, self._settings.watch_interval_s):
            try:
                if not await self._backend.alive():
                    reason = "Triton exited"
                elif await self._backend.engine.server_ready():
                    not_ready = 0
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

    async def _recover(self, stop: asyncio.Event, reason: str) -> None:
        log.error("%s: restarting it", reason)
        self._state.triton_ready.clear()
        self._models.mark_unavailable(reason)
        delay = self._settings.restart_backoff_initial_s
        while not stop.is_set():
            try:
                await self._backend.restart()
                await self._models.load_all()
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
