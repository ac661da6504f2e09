"""The job service's shared state and transition hooks (see ``jobs.py``)."""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from gpufleet.wire import (
    TERMINAL_STATUSES,
    JobRequest,
    JobView,
    ModelRef,
)

from control_plane.errors import (
    NotFound,
    StaleLease,
)
from control_plane.services.fair_share import FairShare
from control_plane.services.job_views import job_view
from control_plane.services.models import ModelService
from control_plane.services.offload import Offload
from control_plane.services.payloads import PayloadService
from control_plane.services.queue_heads import QueueHeads
from control_plane.services.queue_ops import QueueOps
from control_plane.services.quotas import QuotaService
from control_plane.services.regions import RegionService
from control_plane.services.shared_reads import SharedReads
from control_plane.services.sweeper import Sweeper
from control_plane.services.wakeups import (
    Wakeups,
    model_key,
)
from control_plane.settings import Settings
from control_plane.storage.protocols import (
    BlobStore,
    JobRecord,
    JobServiceStores,
    ModelVersionRecord,
)

log = logging.getLogger("control_plane.services.jobs")  # one logger for the job service

Transition = Callable[[JobView, "str | None"], None]
RecordTransition = Callable[[JobRecord, Callable[[], JobView], "str | None"], None]


FINISHED_KEEP_S = 10.0  # how long a terminal record waits for the long polls it woke
FINISHED_MAX = 10_000


class FinishedRecords:
    """Terminal records this replica just committed for jobs a long poll here waits for,
    kept a few seconds: the woken ``wait`` answers from it instead of reading the job back
    (terminal never changes, so the record is the job's last word). Thread-safe."""

    def __init__(self, keep_s: float = FINISHED_KEEP_S, most: int = FINISHED_MAX) -> None:
        self._keep_s = keep_s
        self._most = most
        self._lock = threading.Lock()
        self._records: OrderedDict[str, tuple[float, JobRecord]] = OrderedDict()

    def put(self, job: JobRecord) -> None:
        t = time.monotonic()
        with self._lock:
            self._records[job.id] = (t, job)
            self._records.move_to_end(job.id)
            while self._records:
                at, _ = next(iter(self._records.values()))
                if t - at <= self._keep_s and len(self._records) <= self._most:
                    break
                self._records.popitem(last=False)

    def get(self, job_id: str) -> JobRecord | None:
        with self._lock:
            hit = self._records.get(job_id)
        return None if hit is None else hit[1]


LEASED_MAX = 20_000  # leased records kept per replica (the oldest go first)


def _copied(job: JobRecord) -> JobRecord:
    """``copy.copy(job)``: a new record with the same attributes (what ``copy.copy`` does
    for a plain dataclass, without its generic ``__reduce_ex__`` round; ``dataclasses.replace``
    re-runs ``__init__``: slower still)."""
    new: JobRecord = object.__new__(type(job))
    new.__dict__.update(job.__dict__)
    return new


class LeasedRecords:
    """The jobs this replica leased, as claimed (the request left out: only the fields a
    commit needs) with the room their outputs have inline, by job id and lease token: the
    complete of a lease handed out here commits without reading the job first. Only a hint:
    the commit stays conditional on the lease token, and a failed condition reads the job.
    Thread-safe."""

    def __init__(self, most: int = LEASED_MAX) -> None:
        self._most = most
        self._lock = threading.Lock()
        self._records: OrderedDict[str, tuple[JobRecord, int]] = OrderedDict()

    def put(self, job: JobRecord, room: int) -> None:
        slim = _copied(job)
        slim.request = {}
        with self._lock:
            self._records[job.id] = (slim, room)
            while len(self._records) > self._most:
                self._records.popitem(last=False)

    def get(self, job_id: str, lease_token: str) -> tuple[JobRecord, int] | None:
        with self._lock:
            hit = self._records.get(job_id)
        return hit if hit is not None and hit[0].lease_token == lease_token else None

    def extended(self, job_id: str, lease_token: str, expires: float, key: tuple[str, str]) -> None:
        """An extension of the lease committed here (its marker moved)."""
        with self._lock:
            hit = self._records.get(job_id)
            if hit is not None and hit[0].lease_token == lease_token:
                job = _copied(hit[0])
                job.lease_expires_at, job.lease_key = expires, key
                self._records[job_id] = (job, hit[1])

    def drop(self, job_id: str) -> None:
        with self._lock:
            self._records.pop(job_id, None)


class JobCore:
    """The state the parts of ``JobService`` share (set by ``JobService.__init__`` and the
    hooks wired after it), and what every part does with a job: its wire view, the fencing
    check of a lease, and the transition this replica commits (waiters woken, hooks called)."""

    _settings: Settings
    _store: JobServiceStores
    _now: Callable[[], float]
    offload: Offload
    _models: ModelService
    _blobs: BlobStore
    payloads: PayloadService
    on_transition: list[Transition]
    on_record_transition: list[RecordTransition]
    request_checks: tuple[Callable[[JobRequest], None], ...]
    waiting_reason: Callable[[JobRecord], str | None] | None
    cold_host: Callable[[JobRecord], bool | None] | None
    runner_usable: Callable[[str], bool] | None
    lease_offers: Callable[[str, list[ModelRef]], list[ModelRef]] | None
    regions: RegionService | None
    on_region_lease: list[Callable[[str | None, str], None]]
    _ops: QueueOps
    _sweeper: Sweeper
    _pool: ThreadPoolExecutor
    _heads: QueueHeads
    _reads: SharedReads
    wakeups: Wakeups
    _ready_cache: dict[tuple[str, bool, str, str | None], tuple[float, int, ModelVersionRecord]]
    _depth_cache: dict[str, tuple[float, int]]
    quotas: QuotaService
    _fair: FairShare
    _readied: dict[str, int]
    _finished: FinishedRecords
    _leased: LeasedRecords

    def view(self, job: JobRecord) -> JobView:
        """The wire view of a job (outputs inline, or a presigned ``outputs_url``)."""
        return job_view(job, self._blobs, self._settings.presign_ttl_s)

    def _transitioned(self, job: JobRecord, previous: str | None) -> None:
        key = f"job:{job.id}"  # (job_key, inlined: three transitions per job)
        if job.status in TERMINAL_STATUSES and self.wakeups.watching(key):
            self._finished.put(job)  # handed to the waits woken below: no read back
        self.wakeups.notify(key)
        if job.status == "QUEUED":  # the leases read its shard again, then wake up
            self._heads.queued(job.queue_key[0] if previous is None and job.queue_key else None)
            self.wakeups.notify(model_key(job.model))
        if not self.on_transition and not self.on_record_transition:
            return
        built: list[JobView] = []

        def view() -> JobView:  # built once, and only when a hook asks for it
            if not built:
                built.append(self.view(job))
            return built[0]

        for record_callback in self.on_record_transition:
            try:
                record_callback(job, view, previous)
            except Exception:
                log.warning("on_record_transition callback failed", exc_info=True)
        if not self.on_transition:
            return
        view_now = view()
        for callback in self.on_transition:
            try:
                callback(view_now, previous)
            except Exception:
                log.warning("on_transition callback failed", exc_info=True)

    def _cancel_queued(self, job: JobRecord, message: str) -> JobRecord | None:
        error = {"code": "cancelled", "message": message}
        return self._ops.finish_queued(job, "CANCELLED", error, self._now())

    def _held(self, runner_id: str, job_id: str, lease_token: str) -> JobRecord:
        job = self._store.jobs.get_job(job_id) if job_id.startswith("job_") else None
        return self._check_held(runner_id, job_id, lease_token, job)

    @staticmethod
    def _check_held(
        runner_id: str, job_id: str, lease_token: str, job: JobRecord | None
    ) -> JobRecord:
        if job is None:
            raise NotFound(f"job {job_id!r} not found")
        if job.status != "RUNNING" or job.lease_token != lease_token or job.runner_id != runner_id:
            raise StaleLease(f"the lease of job {job_id} is no longer held (job {job.status})")
        return job
