"""Which models are loaded in Triton, and in which state (what the runner may lease)."""

from __future__ import annotations

import logging
from pathlib import Path

from gpufleet.wire import ModelRef, ModelState

from runner.backends.base import InferenceEngine, InferError
from runner.model_repo import LocalModel, scan_repository

log = logging.getLogger(__name__)


class ModelManager:
    """Loads every model of the local repository (until model sync lands)."""

    def __init__(self, engine: InferenceEngine, repository: Path) -> None:
        self._engine = engine
        self._repository = repository
        self._states: dict[str, ModelState] = {}

    def states(self) -> list[ModelState]:
        return list(self._states.values())

    def ready_refs(self) -> list[ModelRef]:
        """The (name, version) pairs READY in Triton: what the lease asks for."""
        return [
            ModelRef(name=s.name, version=s.version)
            for s in self._states.values()
            if s.state == "READY"
        ]

    def mark_unavailable(self, reason: str) -> None:
        for name, s in self._states.items():
            self._states[name] = s.model_copy(update={"state": "UNAVAILABLE", "reason": reason})

    async def load_all(self) -> bool:
        """(Re)load every local model; failures are recorded per model, not raised.

        True when every model is READY."""
        for model in scan_repository(self._repository):
            await self._load(model)
        return all(s.state == "READY" for s in self._states.values())

    async def load_missing(self) -> bool:
        """Retry the models that are not READY; True when every model is READY."""
        for model in scan_repository(self._repository):
            state = self._states.get(model.name)
            if state is None or state.state != "READY":
                await self._load(model)
        return all(s.state == "READY" for s in self._states.values())

    async def _load(self, model: LocalModel) -> None:
        self._states[model.name] = ModelState(
            name=model.name, version=model.version, state="LOADING"
        )
        try:
            await self._engine.load_model(model.name)
            ready = await self._engine.model_ready(model.name, model.version)
        except InferError as exc:
            log.error("loading model %s failed: %s", model.name, exc)
            self._states[model.name] = ModelState(
                name=model.name, version=model.version, state="UNAVAILABLE", reason=str(exc)
            )
            return
        state = "READY" if ready else "UNAVAILABLE"
        reason = None if ready else f"version {model.version} not ready after load"
        if reason:
            log.error("model %s: %s", model.name, reason)
        else:
            log.info("model %s version %s READY", model.name, model.version)
        self._states[model.name] = ModelState(
            name=model.name, version=model.version, state=state, reason=reason
        )
