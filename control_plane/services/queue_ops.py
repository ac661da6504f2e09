"""Job transitions that keep the queue indexes in step with the job item.

The job item is the commit point of every transition; the queue entry, the lease/TTL markers
and the depth counters follow it. Writes are ordered so that a crash between two of them
leaves only a stale index entry (never a lost or doubly claimed job):

submit   1. put the TTL marker, 2. put the queue entry (token = the job's queue token)
         3. put the job item (condition: new id)                       <- commit
         4. depth + 1
claim    1. put lease marker (expires later; the sweep ignores it until then)
         2. job QUEUED -> RUNNING   (condition: status and queue token)   <- commit
         3. delete the queue entry (condition: its token), depth - 1
finish   1. job QUEUED -> TIMED_OUT/CANCELLED (condition: queue token)  <- commit
(queued) 2. delete the queue entry (condition: its token), depth - 1, delete the TTL marker
complete 1. job RUNNING -> terminal (condition: lease token)              <- commit
         2. delete the lease marker and the queue-TTL marker (no index item outlives
            its job; a crash before leaves them to the sweep, which drops stale markers)
requeue  1. put a new queue entry with a new token
         2. job RUNNING -> QUEUED   (condition: lease token, lease expired) <- commit
         3. delete the lease marker, depth + 1

Batches (submit, claim, complete) run each step for the whole batch before the next one (all
markers, then all commits, then the index clean-up, with one depth update per queue shard), so
each job still sees its steps in the order above, and the batch calls of the store apply:
BatchWriteItem on DynamoDB, one transaction on SQLite (``JobServiceStores.atomic``). Hooks are
called after the batch, never inside its unit of work.
"""

from __future__ import annotations

import hashlib
import random
import secrets
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from control_plane.services.regions import RegionPolicy
from control_plane.settings import Settings
from control_plane.storage.protocols import (
    IdempotencyRecord,
    IdempotencyStore,
    JobClaim,
    JobFinish,
    JobRecord,
    JobServiceStores,
    Marker,
    QueueEntry,
)

Notify = Callable[[JobRecord, "str | None"], None]
"""Called after a transition with the new record and the status it left (None: new job)."""

STALE_ENTRY_GRACE_S = 60.0


def new_token() -> str:
    return secrets.token_urlsafe(12)


def stable_shard(job_id: str, shards: int) -> int:
    """A marker shard picked from the job id (so any replica finds the same one)."""
    return int.from_bytes(hashlib.sha256(job_id.encode()).digest()[:4], "big") % shards


@dataclass(frozen=True)
class Finish:
    """One result to commit: ``job`` as read (RUNNING under ``lease_token``) and its outcome."""

    job: JobRecord
    lease_token: str
    status: str
    outputs_json: str | None = None
    outputs_ref: str | None = None
    error: dict[str, Any] | None = None
    run_ms: int | None = None
    run_info: dict[str, Any] | None = None


class QueueOps:
    """Transitions that keep the queue entries, markers and depth counters in step with jobs."""

    def __init__(self, settings: Settings, store: JobServiceStores, notify: Notify) -> None:
        self._settings = settings
        self._store = store
        self._notify = notify
        self._keys = store.queue.keys

    def new_entry(self, job: JobRecord, shard: int, token: str) -> QueueEntry:
        """The queue entry of ``job`` in queue shard ``shard``."""
        return self._keys.entry(
            model=job.model,
            shard_number=shard,
            job_id=job.id,
            priority=job.priority,
            created_at=job.created_at,
            version=(job.model_version or "") if job.pinned else "",
            region=RegionPolicy.of_job(
                job.region, job.request, self._settings.region_spill_after_s
            ).encode(),
            ttl_deadline=job.ttl_deadline,
            token=token,
            timeout_s=job.timeout_s,
            tenant=job.tenant,
        )

    def ttl_marker(self, job: JobRecord) -> Marker:
        """The marker that times ``job`` out once it is queued past its TTL."""
        n = stable_shard(job.id, self._settings.lease_shards)
        return self._keys.ttl_marker(n, job.id, job.ttl_deadline)

    def lease_marker(self, job_id: str, expires_at: float, token: str) -> Marker:
        """The marker of a lease of ``job_id`` that runs out at ``expires_at``."""
        n = stable_shard(job_id, self._settings.lease_shards)
        return self._keys.lease_marker(n, job_id, expires_at, token)

    def delete_ttl_marker(self, job: JobRecord) -> None:
        """Delete the queue-TTL marker of a job that has just ended (it would stay until the
        job's ``ttl_s`` ran out otherwise)."""
        marker = self.ttl_marker(job)
        self._store.queue.delete_marker(marker.shard, marker.sk)

    def remove_entry(self, job: JobRecord) -> None:
        """Delete the queue entry of a job that has just left QUEUED, and count it out."""
        assert job.queue_key is not None and job.queue_token is not None
        shard, sk = job.queue_key
        self._store.queue.remove_entry(shard, sk, job.queue_token)
        self._store.queue.add_depth(job.model, self._keys.shard_number(shard), -1)

    def enqueue_new(
        self,
        job: JobRecord,
        shard: int,
        claim: tuple[IdempotencyRecord, IdempotencyStore] | None = None,
    ) -> bool | IdempotencyRecord:
        """Write a new QUEUED job; False when the job item exists already (a replay).

        ``claim``: first bind an Idempotency-Key to the job in the same unit of work (one
        transaction on SQLite, as ``enqueue_batch``); when the key is held already, nothing
        is written and the holding record is returned."""
        assert job.queue_token is not None
        entry = self.new_entry(job, shard, job.queue_token)
        job.queue_key = (entry.shard, entry.sk)
        with self._store.atomic():
            if claim is not None:
                record, keys = claim
                held = keys.claim_key(record, record.created_at)
                if held is not None:
                    return held
            self._store.queue.put_marker(self.ttl_marker(job))
            self._store.queue.enqueue(entry)  # False: a newer entry holds the key (job exists)
            if not self._store.jobs.create_job(job):
                return False
            self._store.queue.add_depth(job.model, shard, 1)
        self._notify(job, None)
        return True

    def enqueue_batch(
        self,
        jobs: list[tuple[JobRecord, int]],
        claim: tuple[IdempotencyRecord, IdempotencyStore] | None = None,
    ) -> IdempotencyRecord | None:
        """Write new QUEUED jobs (fresh ids) with batched writes, in the same order.

        ``claim``: first bind an Idempotency-Key to the batch in the same unit of work (one
        transaction on SQLite); when the key is held already, nothing is written and the
        holding record is returned."""
        entries, markers = [], []
        counts: dict[tuple[str, int], int] = {}
        for job, shard in jobs:
            assert job.queue_token is not None
            entry = self.new_entry(job, shard, job.queue_token)
            job.queue_key = (entry.shard, entry.sk)
            entries.append(entry)
            markers.append(self.ttl_marker(job))
            counts[(job.model, shard)] = counts.get((job.model, shard), 0) + 1
        with self._store.atomic():
            if claim is not None:
                record, keys = claim
                held = keys.claim_key(record, record.created_at)
                if held is not None:
                    return held
            self._store.queue.put_markers(markers)
            self._store.queue.enqueue_many(entries)
            self._store.jobs.create_jobs([job for job, _ in jobs])
            for (model, shard), count in counts.items():
                self._store.queue.add_depth(model, shard, count)
        for job, _ in jobs:
            self._notify(job, None)
        return None

    def finish_queued(
        self, job: JobRecord, status: str, error: dict[str, Any], t: float
    ) -> JobRecord | None:
        """QUEUED -> ``status`` (TIMED_OUT, CANCELLED), fenced by the job's queue token; then
        its queue entry and TTL marker go and the hooks are told. None when someone else
        moved the job first (claimed, cancelled, timed out)."""
        assert job.queue_token is not None and job.queue_key is not None
        done = self._store.jobs.finish_queued(job.id, job.queue_token, status, now=t, error=error)
        if done is not None:
            self.remove_entry(job)
            self.delete_ttl_marker(job)
            self._notify(done, "QUEUED")
        return done

    def time_out_queued(self, job: JobRecord, t: float) -> JobRecord | None:
        """QUEUED past its TTL -> TIMED_OUT (None when someone else moved it first)."""
        if job.status != "QUEUED" or not job.queue_token or job.queue_key is None:
            return None
        error = {"code": "ttl_expired", "message": f"queued for more than {job.ttl_s} s"}
        return self.finish_queued(job, "TIMED_OUT", error, t)

    def drop_if_stale(self, entry: QueueEntry, t: float) -> None:
        """Delete a queue entry that no longer stands for a claimable job."""
        job = self._store.jobs.get_job(entry.job_id)
        if job is None:
            if t - entry.created_at < STALE_ENTRY_GRACE_S:
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

    def claim_many(
        self, claims: list[tuple[QueueEntry, str]], runner_id: str, t: float
    ) -> list[JobRecord]:
        """Lease the jobs behind the entries, each on the version paired with it; the jobs
        another claimer won (or whose entry is stale) are left out."""
        if not claims:
            return []
        planned: list[tuple[QueueEntry, str, str, float, Marker]] = []
        for entry, version in claims:
            token = secrets.token_urlsafe(24)
            expires = t + min(self._settings.lease_duration_s, float(entry.timeout_s or 1))
            marker = self.lease_marker(entry.job_id, expires, token)
            planned.append((entry, version, token, expires, marker))
        won: list[tuple[QueueEntry, JobRecord]] = []
        lost: list[tuple[QueueEntry, Marker]] = []
        with self._store.atomic():
            self._store.queue.put_markers([marker for *_, marker in planned])
            jobs = self._store.jobs.claim_jobs(
                [
                    JobClaim(
                        entry.job_id,
                        entry.token,
                        token,
                        version,
                        expires,
                        (marker.shard, marker.sk),
                    )
                    for entry, version, token, expires, marker in planned
                ],
                runner_id=runner_id,
                now=t,
            )
            for (entry, *_, marker), job in zip(planned, jobs, strict=True):
                if job is None:
                    lost.append((entry, marker))
                else:
                    won.append((entry, job))
            self._store.queue.delete_markers([(m.shard, m.sk) for _, m in lost])
            depth: Counter[tuple[str, int]] = Counter()
            for entry, _ in won:
                self._store.queue.remove_entry(entry.shard, entry.sk, entry.token)
                depth[(entry.model, entry.shard_number)] += 1
            for (model, shard_number), count in depth.items():
                self._store.queue.add_depth(model, shard_number, -count)
        for entry, _ in lost:
            if t - entry.created_at > STALE_ENTRY_GRACE_S:
                self.drop_if_stale(entry, t)  # young entries: the winner removes them
        for _, job in won:
            self._notify(job, "QUEUED")
        return [job for _, job in won]

    def finish_many(self, finishes: list[Finish], t: float) -> list[JobRecord | None]:
        """RUNNING -> terminal for each result, fenced by its lease token; None where the token
        is no longer the job's (expired and re-leased, or cancelled)."""
        with self._store.atomic():
            done = self._store.jobs.finish_running_jobs(
                [
                    JobFinish(
                        f.job.id,
                        f.lease_token,
                        f.status,
                        f.outputs_json,
                        f.outputs_ref,
                        f.error,
                        f.run_ms,
                        f.run_info,
                    )
                    for f in finishes
                ],
                now=t,
            )
            ended = [f.job for f, rec in zip(finishes, done, strict=True) if rec is not None]
            ttl = [self.ttl_marker(job) for job in ended]
            self._store.queue.delete_markers(
                [job.lease_key for job in ended if job.lease_key] + [(m.shard, m.sk) for m in ttl]
            )
        for rec in done:
            if rec is not None:
                self._notify(rec, "RUNNING")
        return done

    def expire_entry(self, entry: QueueEntry, t: float) -> None:
        """A queue entry past its TTL: time its job out (lazily, at lease time)."""
        job = self._store.jobs.get_job(entry.job_id)
        if job is None or job.queue_token != entry.token or self.time_out_queued(job, t) is None:
            self.drop_if_stale(entry, t)
