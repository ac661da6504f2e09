"""The job service: submit (idempotent), read, wait, list, cancel; the runner's lease protocol
(lease, extend, complete); expiry sweep; queue depths.

States: QUEUED -> RUNNING -> SUCCEEDED | FAILED | CANCELLED | TIMED_OUT (terminal never
changes). The lease token is a fencing token: extend and complete are conditional on it, so a
runner whose lease expired and was re-leased gets ``StaleLease`` (409) and the result is
committed exactly once. ``complete_batch`` applies the same check to each result on its own
(one stale token refuses that result only). Long polls (``wait``, ``lease``) re-read the
tables, so they work the same across replicas; concurrent waits share their reads (one
``get_jobs`` call for every job read while the previous read ran).

Batches: a batch submit, the claims of one lease and a batch complete each go through the
store's batch calls (see ``queue_ops.py``): a few calls per batch instead of a few per job.

Backpressure: the queue depth of a model is the sum of per-shard counters
(``QueueStore.add_depth``, by whoever wins a transition), read with one small read per submit.

Transitions: after each transition this replica commits, the service publishes it to the
``TransitionBus`` it was built with (``services/transitions.py``): the ``records`` topic gets
``(JobRecord, view, previous_status | None)`` where ``view()`` builds the wire view only when
a subscriber needs it (webhooks of jobs that have one; counters read the record), the
``views`` topic ``(JobView, previous_status | None)`` (the view is built), and
``region_leases`` one call per job leased.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

from gpufleet.wire import JobRequest

from control_plane import clock
from control_plane.services.fair_share import FairShare
from control_plane.services.jobs_complete import JobCompletion, run_timings
from control_plane.services.jobs_core import FinishedRecords, LeasedRecords
from control_plane.services.jobs_lease import JobLeasing
from control_plane.services.jobs_read import JobReads
from control_plane.services.jobs_submit import JobSubmit
from control_plane.services.models import ModelService
from control_plane.services.offload import Offload
from control_plane.services.payloads import PayloadService
from control_plane.services.placement import QueueSnapshot
from control_plane.services.placement_view import PlacementView
from control_plane.services.queue_heads import QueueHeads
from control_plane.services.queue_ops import QueueOps
from control_plane.services.quotas import QuotaService
from control_plane.services.regions import RegionPolicy, RegionService
from control_plane.services.shared_reads import SharedReads
from control_plane.services.sweeper import Sweeper
from control_plane.services.transitions import TransitionBus
from control_plane.services.wakeups import (
    Wakeups,
)
from control_plane.settings import Settings
from control_plane.storage.protocols import (
    BlobStore,
    JobServiceStores,
)
from control_plane.storage.protocols_limits import LimitsStore

__all__ = ["JobService", "SharedReads", "run_timings"]

log = logging.getLogger(__name__)

EMPTY_SHARD_S = 0.2  # how long a lease trusts a queue shard it read empty (see QueueHeads)


class JobService(JobSubmit, JobReads, JobLeasing, JobCompletion):
    """Jobs and the queue on the tables; no state of its own between calls. Its parts:
    ``jobs_submit`` (submit), ``jobs_read`` (get, wait, list, cancel), ``jobs_lease`` (lease,
    extend), ``jobs_complete`` (complete), ``jobs_core`` (state shared by the parts, views,
    transition hooks); the sweep is ``sweeper.py``, the queue's writes ``queue_ops.py``."""

    def __init__(
        self,
        settings: Settings,
        store: JobServiceStores,
        models: ModelService,
        blobs: BlobStore,
        offload: Offload | None = None,
        limits: LimitsStore | None = None,
        now: Callable[[], float] = clock.now,
        *,
        transitions: TransitionBus | None = None,
        quotas: QuotaService | None = None,
        request_checks: Sequence[Callable[[JobRequest], None]] = (),
        placement: PlacementView = PlacementView(),
        regions: RegionService | None = None,
    ) -> None:
        self._settings = settings
        self._store = store
        self._now = now
        # How the async edges run this service's short store calls (inline on SQLite).
        self.offload = offload or Offload()
        self._models = models
        self._blobs = blobs
        self.payloads = PayloadService(settings, blobs)  # POST /v1/payloads, lease URLs
        # Who hears of transitions (services/transitions.py): the bus's subscriber lists.
        self.transitions = transitions if transitions is not None else TransitionBus()
        self.on_transition = self.transitions.views
        self.on_record_transition = self.transitions.records
        self.on_region_lease = self.transitions.region_leases
        # Extra submit-time checks (the webhook target check); each raises InvalidRequest.
        self.request_checks = tuple(request_checks)
        # Placement, capacity and runners (services/placement_view.py).
        self.waiting_reason = placement.waiting_reason
        self.cold_host = placement.cold_host
        self.runner_usable = placement.runner_usable
        self.lease_offers = placement.lease_offers
        # Regions (services/regions.py): request defaults, the lease filter, waiting words.
        self.regions = regions
        self._ops = QueueOps(settings, store, self._transitioned)
        self._sweeper = Sweeper(settings, store, self._ops, self._transitioned, now)
        self._pool = ThreadPoolExecutor(max_workers=16, thread_name_prefix="lease-read")
        self._heads = QueueHeads(
            store.queue,
            self._pool,
            depth=settings.queue_read_depth,
            parallel=not self.offload.inline,
            empty_ttl_s=min(EMPTY_SHARD_S, settings.poll_interval_s / 2),
        )
        self._reads = SharedReads(store.jobs.get_jobs, self.offload)
        self.wakeups = Wakeups()
        self._ready_cache = {}
        self._depth_cache = {}
        # Tenant quotas (submit checks, load counters) and fair leasing across tenants; the
        # composition root builds them and subscribes their counters to the bus.
        if quotas is None:
            quotas = QuotaService(settings, limits, now=now)
            self.transitions.on_record(quotas.job_transition)
        self.quotas = quotas
        self._fair = FairShare(self.quotas.weight, self.quotas.running_room)
        self._readied = {}  # runner id -> heartbeats with a newly READY model
        self._finished = FinishedRecords()  # terminal records handed to woken waits
        self._leased = LeasedRecords()  # jobs leased here: their commit reads nothing first

    # ------------------------------------------------------------------ housekeeping
    def sweep(self) -> dict[str, int]:
        """Requeue or fail expired leases, time out jobs queued past their TTL; store this
        replica's tenant load counts."""
        swept = self._sweeper.sweep()
        try:
            self.quotas.refresh_loads()
        except Exception:
            log.warning("could not store the tenant load counts (retried)", exc_info=True)
        return swept

    def queue_depths(self) -> dict[str, int]:
        """model -> queued jobs (for /metrics)."""
        return self._store.queue.all_depths()

    def queue_snapshot(self, models: list[str]) -> dict[str, QueueSnapshot]:
        """Depth, oldest entry and pinned versions of each model's queue (for placement).

        The oldest entry and the pinned versions are read from the first 100 entries of
        each shard (priority order): an estimate that is exact for queues that short.
        """
        depths = self._store.queue.all_depths()
        keys = self._store.queue.keys
        out: dict[str, QueueSnapshot] = {}
        for model in models:
            entries = [
                e
                for shard in range(self._settings.queue_shards)
                for e in self._store.queue.head(keys.queue_shard(model, shard), 100)
            ]
            by_region: dict[str, float] = {}
            by_policy: dict[str, tuple[int, float]] = {}
            for e in entries:
                preferred = RegionPolicy.decode(e.region).preferred if e.region else None
                if preferred is not None:
                    by_region[preferred] = min(by_region.get(preferred, e.created_at), e.created_at)
                n, oldest = by_policy.get(e.region, (0, e.created_at))
                by_policy[e.region] = (n + 1, min(oldest, e.created_at))
            out[model] = QueueSnapshot(
                depth=max(depths.get(model, 0), len(entries)),
                oldest_at=min((e.created_at for e in entries), default=None),
                pinned_versions=frozenset(e.version for e in entries if e.version),
                oldest_by_region=by_region,
                by_policy=by_policy,
            )
        return out

    def ping(self) -> None:
        """Raises Unavailable when the tables or the bucket cannot be reached."""
        self._store.jobs.ping()
        self._store.queue.ping()
        self._blobs.ping()
