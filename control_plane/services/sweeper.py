"""Expiry: leases that ran out (requeue or fail) and jobs queued past their TTL (TIMED_OUT).

``Sweeper.sweep()`` reads only due markers (``QueueStore.due_markers``), so its cost follows
what has expired, not what is stored. Every replica may sweep at the same time: each step is a
conditional write on the job item, so two sweepers never requeue or fail a job twice.

Order of writes when requeueing (each a single conditional write; see dynamo_queue for why):
1. put the new queue entry (its own token)        -- crash here: the entry is stale, a lease
                                                     drops it after checking the job item
2. job RUNNING -> QUEUED (lease token, expired)   -- the commit point
3. delete the lease marker, count the depth

Timeouts: a lease is capped at its attempt's deadline (``started_at + timeout_s``). A lease
that ran out there was held to the end, so the attempt timed out: the job ends ``FAILED``
with code ``timeout`` and is not run again (``retry_timed_out_jobs`` requeues it instead while
attempts are left). A lease that ran out earlier (the runner went away) is requeued as usual.

Reads and clean-up are batched: the jobs behind each page of 100 due markers are read with
one ``get_jobs`` call, and the page's markers to drop are deleted together after it; each
transition stays its own conditional write (a record read a moment before only costs a
lost condition, never a wrong transition).
"""

from __future__ import annotations

from collections.abc import Callable

from gpufleet._logs import bind

from control_plane import clock
from control_plane.services.queue_ops import Notify, QueueOps
from control_plane.settings import Settings
from control_plane.storage.protocols import JobRecord, JobServiceStores, Marker

MARKERS_PER_PAGE = 100
MAX_PAGES = 10
DEADLINE_SLACK_S = 0.01  # stored times may be rounded (DynamoDB numbers)


class Sweeper:
    """One pass over the due lease-expiry and queue-TTL markers of every shard."""

    def __init__(
        self,
        settings: Settings,
        store: JobServiceStores,
        ops: QueueOps,
        notify: Notify,
        now: Callable[[], float] = clock.now,
    ):
        self._settings = settings
        self._now = now
        self._store = store
        self._ops = ops
        self._notify = notify

    def sweep(self) -> dict[str, int]:
        """``{"requeued": n, "exhausted": n, "timed_out": n}`` of this pass."""
        counts = {"requeued": 0, "exhausted": 0, "timed_out": 0}
        keys = self._store.queue.keys
        for n in range(self._settings.lease_shards):
            for shard, handle in (
                (keys.lease_shard(n), self._lease_expired),
                (keys.ttl_shard(n), self._ttl_expired),
            ):
                due = self._due(shard)
                for i in range(0, len(due), MARKERS_PER_PAGE):  # reads close to the writes
                    page = due[i : i + MARKERS_PER_PAGE]
                    jobs = self._store.jobs.get_jobs([m.job_id for m in page])
                    stale = []
                    for m in page:
                        job = jobs.get(m.job_id)
                        bind(job=m.job_id, model=job.model if job else None)  # its log lines
                        if handle(m, job, counts):
                            stale.append((m.shard, m.sk))
                    bind(job=None, model=None)
                    self._store.queue.delete_markers(stale)
        return counts

    def _due(self, shard: str) -> list[Marker]:
        out: list[Marker] = []
        before = self._store.queue.keys.due_bound(self._now())
        after: str | None = None
        for _ in range(MAX_PAGES):
            page = self._store.queue.due_markers(shard, before, MARKERS_PER_PAGE, after)
            out.extend(page)
            if len(page) < MARKERS_PER_PAGE:
                break
            after = page[-1].sk
        return out

    def _lease_expired(self, marker: Marker, job: JobRecord | None, counts: dict[str, int]) -> bool:
        """Act on one due lease marker; True when the marker is to be deleted."""
        t = self._now()
        current = (
            job is not None
            and job.status == "RUNNING"
            and job.lease_token == marker.token
            and job.lease_key == (marker.shard, marker.sk)
        )
        if job is None or not current:
            return True  # stale marker
        if job.lease_expires_at is not None and job.lease_expires_at > t:
            return False  # extended after we read the marker
        timed_out = job.deadline is not None and t >= job.deadline
        # The lease ran all the way to the attempt's deadline (it is capped there): the runner
        # held it until then, so the attempt timed out; it is not run again unless asked.
        ran_out = (
            timed_out
            and job.deadline is not None
            and job.lease_expires_at is not None
            and job.lease_expires_at >= job.deadline - DEADLINE_SLACK_S
        )
        retry = not ran_out or self._settings.retry_timed_out_jobs
        if retry and job.attempts < job.max_attempts and t < job.ttl_deadline:
            if self._ops.requeue(job, marker, t):  # deletes the marker itself
                counts["requeued"] += 1
            return False
        if ran_out:
            status, code = "FAILED", "timeout"
            message = f"attempt {job.attempts} ran past timeout_s={job.timeout_s}"
        elif job.attempts < job.max_attempts:
            status, code = "TIMED_OUT", "ttl_expired"
            message = f"the lease expired and the job is older than its ttl_s={job.ttl_s}"
        elif timed_out:
            status, code = "FAILED", "timeout"
            message = f"attempt {job.attempts} ran past timeout_s={job.timeout_s}"
        else:
            status, code = "FAILED", "attempts_exhausted"
            message = f"the lease expired on each of {job.attempts} attempts"
        assert job.lease_token is not None
        done = self._store.jobs.finish_running(
            job.id,
            job.lease_token,
            status,
            now=t,
            error={"code": code, "message": message},
            expired_before=t,
        )
        if done is None:
            return False
        self._ops.delete_ttl_marker(job)
        counts["timed_out" if status == "TIMED_OUT" else "exhausted"] += 1
        self._notify(done, "RUNNING")
        return True

    def _ttl_expired(self, marker: Marker, job: JobRecord | None, counts: dict[str, int]) -> bool:
        """Act on one due queue-TTL marker; True when the marker is to be deleted."""
        if job is not None and job.status == "QUEUED" and job.ttl_deadline <= self._now():
            if self._ops.time_out_queued(job, self._now()) is not None:
                counts["timed_out"] += 1
            elif (again := self._store.jobs.get_job(marker.job_id)) and again.status == "QUEUED":
                return False  # moved meanwhile (requeued): keep the marker for the next pass
        return True
