"""Local mode: the models of the runner's own repository directory, loaded as they are
(no desired list from the control plane, or a desired entry with ``managed: false``).

One loop (``load``) serves every caller: a Triton (re)start (everything), the supervisor's
and the sync loop's retries (what is not READY) and an unmanaged desired entry (one name).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from runner.backends.base import InferenceEngine, InferError
from runner.model_repo import LocalModel, scan_repository
from runner.model_states import ModelStates

log = logging.getLogger(__name__)


class LocalModels:
    """Loads the highest version of each model directory into Triton (by its own config)."""

    def __init__(
        self,
        engine: InferenceEngine,
        repository: Path,
        states: ModelStates,
        loads: dict[tuple[str, str], tuple[float, float]],
    ) -> None:
        self._engine = engine
        self._repository = repository
        self._states = states
        self._loads = loads  # (name, version) -> (load ms, READY at: epoch s)

    async def load(self, *, only: str | None = None, missing_only: bool = True) -> None:
        """Load the repository's models (``only``: that name) that are not READY (every one
        when not ``missing_only``). The caller holds the manager's Triton lock."""
        for model in scan_repository(self._repository):
            if only is not None and model.name != only:
                continue
            state = self._states.get((model.name, model.version))
            if not missing_only or state is None or state.state != "READY":
                await self._load_one(model)

    async def _load_one(self, model: LocalModel) -> None:
        for key in [k for k in self._states.keys_of(model.name) if k[1] != model.version]:
            del self._states[key]
        self._states.set_state(model.name, model.version, "LOADING")
        started = time.monotonic()
        try:
            await self._engine.load_model(model.name)
            load_ms = (time.monotonic() - started) * 1000
            ready = await self._engine.model_ready(model.name, model.version)
        except InferError as exc:
            log.error("loading model %s failed: %s", model.name, exc)
            self._states.set_state(model.name, model.version, "UNAVAILABLE", str(exc))
            return
        if ready:
            log.info(
                "model %s version %s READY (loaded in %.0f ms)", model.name, model.version, load_ms
            )
            self._states.set_state(model.name, model.version, "READY")
            self._loads[(model.name, model.version)] = (load_ms, time.time())
        else:
            reason = f"version {model.version} not ready after load"
            log.error("model %s: %s", model.name, reason)
            self._states.set_state(model.name, model.version, "UNAVAILABLE", reason)
