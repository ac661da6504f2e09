"""The transition bus: who hears of the job transitions a replica commits.

``JobService`` publishes each transition it commits (after the write) to the bus it was
built with; the composition root (``control_plane.composition``) subscribes the quota
counters, webhooks, deployments (``job_queued``) and rollups, and ``create_app`` the
metrics. Subscribers run in subscription order, on the committing thread; one that raises
is logged and skipped (the commit stands).

Three topics:
- ``records``: ``(JobRecord, view, previous_status | None)``, the record as just written;
  ``view()`` builds the wire view only when a subscriber needs it;
- ``views``: ``(JobView, previous_status | None)``, the wire view (built once);
- ``region_leases``: ``(runner_region | None, "preferred" | "spilled" | "any")`` per job
  leased.
"""

from __future__ import annotations

from collections.abc import Callable

from gpufleet.wire import JobView

from control_plane.storage.protocols import JobRecord

ViewTransition = Callable[[JobView, "str | None"], None]
RecordTransition = Callable[[JobRecord, Callable[[], JobView], "str | None"], None]
RegionLease = Callable[["str | None", str], None]


class TransitionBus:
    """Subscriber lists per topic (see the module docstring)."""

    def __init__(self) -> None:
        self.records: list[RecordTransition] = []
        self.views: list[ViewTransition] = []
        self.region_leases: list[RegionLease] = []

    def on_record(self, subscriber: RecordTransition) -> None:
        """Hear of each transition with the job's record as written."""
        self.records.append(subscriber)

    def on_view(self, subscriber: ViewTransition) -> None:
        """Hear of each transition with the job's wire view."""
        self.views.append(subscriber)

    def on_region_lease(self, subscriber: RegionLease) -> None:
        """Hear of each job leased: the runner's region and how the job's region fit."""
        self.region_leases.append(subscriber)
