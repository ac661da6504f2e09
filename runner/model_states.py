"""The state table of the runner's models: one ``ModelState`` per (name, version), sent
with every heartbeat; what is READY is what the lease asks for.

States: ``LOADING`` (with ``reason`` "downloading" while files arrive), ``READY``,
``UNLOADING`` (draining: no lease asks for it), ``UNAVAILABLE`` with the reason.
"""

from __future__ import annotations

from gpufleet.wire import ModelLoadState, ModelRef, ModelState


class ModelStates(dict[tuple[str, str], ModelState]):
    """``(name, version) -> ModelState``, with the questions the runner asks of it."""

    def state_of(self, name: str, version: str) -> str | None:
        s = self.get((name, version))
        return s.state if s else None

    def set_state(
        self, name: str, version: str, state: ModelLoadState, reason: str | None = None
    ) -> None:
        """Set a state; a version that stays READY keeps the memory its load measured."""
        prev = self.get((name, version))
        memory = prev.memory_mb if prev is not None and state == "READY" else None
        self[(name, version)] = ModelState(
            name=name, version=version, state=state, reason=reason, memory_mb=memory
        )

    def all_ready(self) -> bool:
        return all(s.state == "READY" for s in self.values())

    def ready_refs(self) -> list[ModelRef]:
        """The (name, version) pairs READY in Triton: what the lease asks for."""
        return [
            ModelRef(name=s.name, version=s.version) for s in self.values() if s.state == "READY"
        ]

    def mark_unavailable(self, reason: str) -> None:
        """Every model UNAVAILABLE (Triton is gone)."""
        for key, s in self.items():
            self[key] = s.model_copy(update={"state": "UNAVAILABLE", "reason": reason})

    def keys_of(self, name: str) -> list[tuple[str, str]]:
        """The (name, version) keys of one model."""
        return [k for k in self if k[0] == name]
