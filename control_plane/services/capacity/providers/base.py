"""The provider interface: list a pool's hosts, start some, stop one, protect busy ones.

A host is identified by the id the provider gives it (a container's host id label, an EC2
instance id). The runner on a host registers with the label ``gpufleet.host=<id>`` (carried
by its join token or set by the host's boot script), which is how the autoscaler joins a
provider's host to a runner record.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

HOST_LABEL = "gpufleet.host"
POOL_LABEL = "gpufleet.pool"

STARTING, RUNNING, FAILED = "starting", "running", "failed"
# the engine decided to stop it and waits for the control plane (a lifecycle hook): the
# autoscaler drains it, then ``stop`` lets the termination go on
TERMINATING = "terminating"


@dataclass(frozen=True)
class PoolConfig:
    """What a provider needs to know about the pool."""

    name: str
    region: str
    labels: Mapping[str, str]
    settings: Mapping[str, Any]
    gpu_count: int = 0


@dataclass(frozen=True)
class Host:
    """A host as the engine reports it. ``state``: ``starting`` (the engine is bringing it up),
    ``running``, ``failed`` (it stopped on its own: the autoscaler removes it), or
    ``terminating`` (the engine is stopping it and waits: drained, then ``stop``)."""

    id: str
    launched_at: float
    state: str = RUNNING
    detail: str = ""


@dataclass(frozen=True)
class Launch:
    """One host to start: its id (when the provider lets the caller choose it) and the
    single-purpose join token its runner registers with."""

    host_id: str
    join_token: str
    env: Mapping[str, str] = field(default_factory=dict)


class Provider(Protocol):
    """An engine that starts and stops hosts. Every method may raise
    ``control_plane.errors.Unavailable`` when the engine cannot be reached; invalid settings
    are ``InvalidRequest`` naming the field (``provider.settings.<name>``)."""

    kind: str

    def validate(self, settings: Mapping[str, Any]) -> None:
        """Check a pool's provider settings (at ``PUT /v1/pools/{name}``)."""
        ...

    def list_hosts(self, pool: PoolConfig) -> list[Host]:
        """Every host of the pool that is not being stopped."""
        ...

    def start(self, pool: PoolConfig, launches: list[Launch]) -> list[str]:
        """Ask for ``len(launches)`` more hosts; returns the ids known at once (an engine that
        picks its own ids may return none: they appear in ``list_hosts``)."""
        ...

    def stop(self, pool: PoolConfig, host_id: str) -> None:
        """Stop and remove one host (gone already: no error)."""
        ...

    def protect(self, pool: PoolConfig, host_ids: list[str], protected: bool) -> None:
        """Protect (or stop protecting) hosts from the engine's own scale-in; engines that
        never scale in by themselves do nothing."""
        ...
