"""Leasing jobs to runners and renewing leases (part of ``JobService``)."""

from __future__ import annotations

import logging
import time
from collections import defaultdict

from gpufleet.wire import (
    ExtendResponse,
    LeasedJob,
    LeaseRequest,
    LeaseResponse,
)

from control_plane.clock import iso
from control_plane.errors import (
    StaleLease,
)
from control_plane.services.job_views import leased_job
from control_plane.services.jobs_core import JobCore
from control_plane.services.regions import static_region_fits
from control_plane.services.wakeups import (
    model_key,
    runner_key,
    sleep_or_wake,
)
from control_plane.storage import budget as storage_budget
from control_plane.storage.protocols import (
    JobRecord,
    QueueEntry,
)

log = logging.getLogger("control_plane.services.jobs")  # one logger for the job service

CLAIM_ROUNDS = 5
ENTRY_TIME_RESOLUTION_S = 0.001  # queue sort keys hold created_at in whole ms


class JobLeasing(JobCore):
    """The runner's side of the queue: lease (long poll, fair across tenants, region aware)
    and extend."""

    async def lease(self, runner_id: str, region: str | None, req: LeaseRequest) -> LeaseResponse:
        """Claim up to ``max_jobs`` jobs of the offered models; long-polls up to ``wait_s``."""
        wait_s = max(0.0, min(req.wait_s, self._settings.max_lease_wait_s))
        deadline = time.monotonic() + wait_s
        asked = req.models
        first = True
        # a heartbeat of this runner reporting a newly READY model ends the poll (an empty
        # answer): the runner asks again at once, offering that model too (cold starts)
        readied = self._readied.get(runner_id, 0)
        keys = [*(model_key(m.name) for m in asked), runner_key(runner_id)]
        with self.wakeups.watch(keys) as queued:
            while True:
                if self._readied.get(runner_id, 0) != readied:
                    return LeaseResponse(jobs=[])
                queued.clear()  # before the read: a job queued after it wakes us
                storage_budget.renew()  # each round of a long poll has its own budget
                usable = self.runner_usable
                # Revoked during the long poll: claim nothing it could not complete.
                if not first and usable and not await self.offload(usable, runner_id):
                    return LeaseResponse(jobs=[])
                if self.lease_offers is not None and (first or len(req.models) < len(asked)):
                    # Placement may hold back a model (not READY there yet, as far as the
                    # last heartbeat said): ask again each round until all are offered.
                    offers = await self.offload(self.lease_offers, runner_id, asked)
                    if offers != req.models:  # (a copy only when placement holds one back)
                        req = req.model_copy(update={"models": offers})
                first = False
                jobs = await self.offload(self._lease_once, runner_id, region, req)
                left = deadline - time.monotonic()
                if jobs or left <= 0:
                    return LeaseResponse(jobs=jobs)
                await sleep_or_wake(queued, min(self._settings.poll_interval_s, left))

    def runner_readied(self, runner_id: str) -> None:
        """A heartbeat of ``runner_id`` reported a model READY that was not: its lease long
        poll on this replica answers now, so it asks again offering that model too."""
        self._readied[runner_id] = self._readied.get(runner_id, 0) + 1
        self.wakeups.notify(runner_key(runner_id))

    def _candidates(
        self, offers: dict[str, set[str]], region: str | None, want: int, long_poll: bool
    ) -> list[QueueEntry]:
        keys = self._store.queue.keys
        shards = [
            keys.queue_shard(model, n)
            for model in offers
            for n in range(self._settings.queue_shards)
        ]

        # An entry's created_at comes from its sort key, in whole milliseconds rounded down:
        # its queued time may read up to 1 ms long, so it is counted 1 ms short and a spill
        # delay is never cut short (a job spilled after 1.9995 s of a 2 s delay showed
        # queue_ms 1999).
        t = self._now() - ENTRY_TIME_RESOLUTION_S
        region_fits = self._region_fits

        def fits(e: QueueEntry) -> bool:
            return (not e.version or e.version in offers[e.model]) and region_fits(
                e.region, region, t - e.created_at
            )

        pool = frozenset(offers)
        return self._heads.take(
            shards, fits, want, lambda es, n: self._fair.pick(pool, es, n), trust_empty=long_poll
        )

    def _region_fits(self, entry_region: str, runner_region: str | None, queued_s: float) -> bool:
        """Region eligibility of a runner for a queue entry (services/regions.py): never
        outside the job's ``regions_allowed``; its preferred region at once; other allowed
        regions nearest first, one ``spill_after_s`` apart."""
        if not entry_region:
            return True
        if self.regions is not None:
            return self.regions.fits(entry_region, runner_region, queued_s)
        return static_region_fits(entry_region, runner_region, queued_s)

    def _lease_once(self, runner_id: str, region: str | None, req: LeaseRequest) -> list[LeasedJob]:
        offers: dict[str, set[str]] = defaultdict(set)
        for m in req.models:
            offers[m.name].add(m.version)
        if not offers:
            return []
        leased: list[LeasedJob] = []
        self.quotas.before_lease()  # what fair leasing reads under the read-ahead's lock
        for _ in range(CLAIM_ROUNDS):  # a round whose claims all lost a race takes more
            want = req.max_jobs - len(leased)
            pending = self._candidates(offers, region, want, req.wait_s > 0)
            t = self._now()
            claims: list[tuple[QueueEntry, str]] = []
            for entry in pending:
                if entry.ttl_deadline <= t:
                    self._ops.expire_entry(entry, t)
                    continue
                claims.append((entry, entry.version or max(offers[entry.model], key=int)))
            for job in self._ops.claim_many(claims, runner_id, t):  # one batch per round
                self._leased.put(job, self._store.jobs.max_inline_outputs(job))
                leased.append(leased_job(job, self.payloads.lease_urls))  # with its URLs
                self._region_leased(job, region)
            if len(leased) >= req.max_jobs or not pending:
                break
        return leased

    def _region_leased(self, job: JobRecord, region: str | None) -> None:
        if not self.on_region_lease:
            return
        placement = (
            "any" if job.region is None else ("preferred" if job.region == region else "spilled")
        )
        for hook in self.on_region_lease:
            try:
                hook(region, placement)
            except Exception:
                log.warning("on_region_lease hook failed", exc_info=True)

    def extend(self, runner_id: str, job_id: str, lease_token: str) -> ExtendResponse:
        """Renew a lease; never past the attempt's deadline (started_at + timeout_s)."""
        job = self._held(runner_id, job_id, lease_token)
        t = self._now()
        deadline = job.deadline or t
        if t >= deadline:
            raise StaleLease(f"job {job_id} ran past its timeout_s={job.timeout_s}")
        expires = min(t + self._settings.lease_duration_s, deadline)
        marker = self._ops.lease_marker(job_id, expires, lease_token)
        key = (marker.shard, marker.sk)
        self._store.queue.put_marker(marker)
        if self._store.jobs.extend_lease(job_id, lease_token, runner_id, expires, key) is None:
            if job.lease_key != key:
                self._store.queue.delete_marker(*key)
            raise StaleLease(f"the lease of job {job_id} is no longer held")
        self._leased.extended(job_id, lease_token, expires, key)
        if job.lease_key and job.lease_key != key:
            self._store.queue.delete_marker(*job.lease_key)
        return ExtendResponse(lease_expires_at=iso(expires) or "")
