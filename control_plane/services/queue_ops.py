"""Job transitions that keep the queue indexes in step with the job item.

The job item is the commit point of every transition; the queue entry, the lease/TTL markers
and the depth counters follow it. Writes are ordered so that a crash between two of them
leaves only a stale index entry (never a lost or doubly claimed job):

submit   1. put the TTL marker, 2. put the queue entry (token = the job's queue token)
         3. put the job item (condition: new id)                       <- commit
claim    1. put lease marker (expires later; the sweep ignores it until then)
         2. job QUEUED -> RUNNING   (condition: status and queue token)   <- commit
         3. delete the queue entry (condition: its token), depth - 1
requeue  1. put a new queue entry with a new token
         2. job RUNNING -> QUEUED   (condition: lease token, lease expired) <- commit
         3. delete the lease marker, depth + 1
"""

from __future__ import annotations

import random
import secrets
from collections.abc import Callable

from control_plane.services import queue_keys as keys
from control_plane.settings import Settings
from control_plane.storage.protocols import JobRecord, JobStore, Marker, QueueEntry

Notify = Callable[[JobRecord, "str | None"], None]
"""Called after a transition with the new record and the status it left (None: new job)."""

STALE_ENTRY_GRACE_S = 60.0


def new_token() -> str:
    return secrets.token_urlsafe(12)


class QueueOps:
    """Transitions that keep the queue entries, markers and depth counters in step with jobs."""

    def __init__(self, settings: Settings, store: JobStore, notify: Notify) -> None:
        self._settings = settings
        self._store = store
        self._notify = notify

    def new_entry(self, job: JobRecord, shard: int, token: str) -> QueueEntry:
        """The queue entry of ``job`` in queue shard ``shard``."""
        return QueueEntry(
            shard=keys.queue_shard(job.model, shard),
            sk=keys.queue_sk(job.priority, job.created_at, job.id),
            job_id=job.id,
            version=(job.model_version or "") if job.pinned else "",
            region=job.region or "",
            ttl_deadline=job.ttl_deadline,
            token=token,
            timeout_s=job.timeout_s,
        )

    def enqueue_new(self, job: JobRecord, shard: int) -> bool:
        """Write a new QUEUED job; False when the job item exists already (a replay)."""
        assert job.queue_token is not None
        entry = self.new_entry(job, shard, job.queue_token)
        job.queue_key = (entry.shard, entry.sk)
        m_shard, m_sk = keys.ttl_marker(job.id, job.ttl_deadline, self._settings.lease_shards)
        self._store.queue.put_marker(Marker(m_shard, m_sk, job.id))
        self._store.queue.enqueue(entry)  # False: a newer entry holds the key (job exists)
        if not self._store.jobs.create_job(job):
            return False
        self._store.queue.add_depth(job.model, shard, 1)
        self._notify(job, None)
        return True

    def enqueue_batch(self, jobs: list[tuple[JobRecord, int]]) -> None:
        """Write new QUEUED jobs (fresh ids) with batched writes, in the same order."""
        entries, markers = [], []
        counts: dict[tuple[str, int], int] = {}
        for job, shard in jobs:
            assert job.queue_token is not None
            entry = self.new_entry(job, shard, job.queue_token)
            job.queue_key = (entry.shard, entry.sk)
            entries.append(entry)
            m_shard, m_sk = keys.ttl_marker(job.id, job.ttl_deadline, self._settings.lease_shards)
            markers.append(Marker(m_shard, m_sk, job.id))
            counts[(job.model, shard)] = counts.get((job.model, shard), 0) + 1
        self._store.queue.put_markers(markers)
        self._store.queue.enqueue_many(entries)
        self._store.jobs.create_jobs([job for job, _ in jobs])
        for (model, shard), count in counts.items():
            self._store.queue.add_depth(model, shard, count)
        for job, _ in jobs:
            self._notify(job, None)

    def time_out_queued(self, job: JobRecord, t: float) -> JobRecord | None:
        """QUEUED past its TTL -> TIMED_OUT (None when someone else moved it first)."""
        if job.status != "QUEUED" or not job.queue_token or job.queue_key is None:
            return None
        done = self._store.jobs.finish_queued(
            job.id,
            job.queue_token,
            "TIMED_OUT",
            now=t,
            error={"code": "ttl_expired", "message": f"queued for more than {job.ttl_s} s"},
        )
        if done is not None:
            shard, sk = job.queue_key
            self._store.queue.remove_entry(shard, sk, job.queue_token)
            self._store.queue.add_depth(job.model, int(shard.rsplit("#", 1)[1]), -1)
            self._notify(done, "QUEUED")
        return done

    def drop_if_stale(self, entry: QueueEntry, t: float) -> None:
        """Delete a queue entry that no longer stands for a claimable job."""
        job = self._store.jobs.get_job(entry.job_id)
        if job is None:
            created_ms = int(entry.sk.split("#")[1])
            if t - created_ms / 1000 < STALE_ENTRY_GRACE_S:
                return  # the submit may still be writing the job item
        elif job.status == "QUEUED" and job.queue_token == entry.token:
            return
        self._store.queue.remove_entry(entry.shard, entry.sk, entry.token)

    def requeue(self, job: JobRecord, marker: Marker, t: float) -> bool:
        """An expired lease's job back into the queue (False: someone else moved it)."""
        token = new_token()
        entry = self.new_entry(job, random.randrange(self._settings.queue_shards), token)
        if not self._store.queue.enqueue(entry):
            return False
        assert job.lease_token is not None
        if not self._store.jobs.requeue_running(
            job.id, job.lease_token, (entry.shard, entry.sk), token, expired_before=t
        ):
            self._store.queue.remove_entry(entry.shard, entry.sk, token)
            return False
        self._store.queue.delete_marker(marker.shard, marker.sk)
        self._store.queue.add_depth(job.model, entry.shard_number, 1)
        job.status = "QUEUED"
        self._notify(job, "RUNNING")
        return True

    def claim(self, entry: QueueEntry, runner_id: str, version: str, t: float) -> JobRecord | None:
        """Lease the job behind ``entry``; None when another claimer won (or it is stale)."""
        token = secrets.token_urlsafe(24)
        expires = t + min(self._settings.lease_duration_s, float(entry.timeout_s or 1))
        shard, sk = keys.lease_marker(entry.job_id, expires, self._settings.lease_shards)
        self._store.queue.put_marker(Marker(shard, sk, entry.job_id, token))
        job = self._store.jobs.claim_job(
            entry.job_id,
            entry.token,
            lease_token=token,
            runner_id=runner_id,
            version=version,
            now=t,
            lease_expires_at=expires,
            lease_key=(shard, sk),
        )
        if job is None:
            self._store.queue.delete_marker(shard, sk)
            if t - int(entry.sk.split("#")[1]) / 1000 > STALE_ENTRY_GRACE_S:
                self.drop_if_stale(entry, t)  # young entries: the winner removes them
            return None
        self._store.queue.remove_entry(entry.shard, entry.sk, entry.token)
        self._store.queue.add_depth(entry.model, entry.shard_number, -1)
        self._notify(job, "QUEUED")
        return job

    def expire_entry(self, entry: QueueEntry, t: float) -> None:
        """A queue entry past its TTL: time its job out (lazily, at lease time)."""
        job = self._store.jobs.get_job(entry.job_id)
        if job is None or job.queue_token != entry.token or self.time_out_queued(job, t) is None:
            self.drop_if_stale(entry, t)
