"""What the job service asks of placement, capacity, regions and runners (a read-only view
given to its constructor by the composition root, ``control_plane.composition``).

Every field is optional: a job service built alone (unit and contract tests) asks nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from gpufleet.wire import ModelRef

from control_plane.storage.protocols import JobRecord


@dataclass(frozen=True)
class PlacementView:
    """The job service's questions to the rest of the control plane."""

    # Why a QUEUED job waits (a pool starting a host, then the deployments' placement).
    waiting_reason: Callable[[JobRecord], str | None] | None = None
    # Did the job wait for a host a capacity pool started for it? (None: not a pool's host)
    cold_host: Callable[[JobRecord], bool | None] | None = None
    # Which of a runner's offered models it may be leased jobs of (READY there, if deployed).
    lease_offers: Callable[[str, list[ModelRef]], list[ModelRef]] | None = None
    # Whether a runner may still lease (not revoked); re-checked during long polls.
    runner_usable: Callable[[str], bool] | None = None
