"""Reading, waiting for, listing and cancelling jobs (part of ``JobService``)."""

from __future__ import annotations

import logging
import time

from gpufleet.wire import (
    TERMINAL_STATUSES,
    JobList,
    JobLogs,
    JobView,
    Tensor,
)

from control_plane.errors import (
    Conflict,
    NotFound,
)
from control_plane.services.jobs_core import JobCore
from control_plane.services.principal import Principal
from control_plane.services.regions import RegionPolicy
from control_plane.services.wakeups import (
    job_key,
    sleep_or_wake,
)
from control_plane.storage import budget as storage_budget
from control_plane.storage.protocols import (
    JobRecord,
)

log = logging.getLogger("control_plane.services.jobs")  # one logger for the job service

MAX_LIST = 100


class JobReads(JobCore):
    """Reading jobs: get (with why a QUEUED job waits), wait (long poll), list, inputs, logs,
    and cancel."""

    def _load(self, p: Principal, job_id: str) -> JobRecord:
        job = self._store.jobs.get_job(job_id) if job_id.startswith("job_") else None
        return self._expire_if_due(self._visible(p, job_id, job))

    @staticmethod
    def _visible(p: Principal, job_id: str, job: JobRecord | None) -> JobRecord:
        if job is None or not p.can_see_tenant(job.tenant):
            raise NotFound(f"job {job_id!r} not found")
        return job

    def _expire_if_due(self, job: JobRecord) -> JobRecord:
        """A job queued past its TTL, timed out now (lazily, at read time)."""
        if job.status == "QUEUED" and self._now() >= job.ttl_deadline:
            return (
                self._ops.time_out_queued(job, self._now())
                or self._store.jobs.get_job(job.id)
                or job
            )
        return job

    async def _load_shared(self, p: Principal, job_id: str) -> JobRecord:
        """``_load`` for long polls: the read is shared with the other waits (``SharedReads``)."""
        job = await self._reads.get(job_id) if job_id.startswith("job_") else None
        job = self._visible(p, job_id, job)
        if job.status == "QUEUED" and self._now() >= job.ttl_deadline:
            job = await self.offload(self._expire_if_due, job)
        return job

    def get(self, p: Principal, job_id: str) -> JobView:
        p.require("jobs:read")
        return self._with_reason(self._load(p, job_id))

    def inputs(self, p: Principal, job_id: str) -> list[Tensor]:
        """The job's input tensors as submitted (large ones as ``data_ref``), for the console's
        job page; 404 where ``get`` would be."""
        p.require("jobs:read")
        return [Tensor(**t) for t in self._load(p, job_id).request.get("inputs") or []]

    def _with_reason(self, job: JobRecord) -> JobView:
        """The view, with ``waiting_reason`` for a QUEUED job when placement can tell, and
        ``cold_host`` for a job that ran when capacity can tell."""
        view = self.view(job)
        if job.status == "QUEUED" and self.waiting_reason is not None:
            try:
                view.waiting_reason = self.waiting_reason(job)
            except Exception:
                log.warning("waiting_reason failed for %s", job.id, exc_info=True)
        if job.status == "QUEUED" and view.waiting_reason is None:
            view.waiting_reason = self.quotas.waiting_reason(job.tenant)
        if job.status == "QUEUED" and self.regions is not None:
            try:
                view.waiting_reason = self._region_reason(job, view.waiting_reason)
            except Exception:
                log.warning("region waiting_reason failed for %s", job.id, exc_info=True)
        if job.runner_id and self.cold_host is not None:
            try:
                view.cold_host = self.cold_host(job)
            except Exception:
                log.warning("cold_host failed for %s", job.id, exc_info=True)
        return view

    def _region_reason(self, job: JobRecord, reason: str | None) -> str | None:
        """``reason`` with what the job's region policy waits for (region, spill delay)."""
        assert self.regions is not None
        policy = RegionPolicy.of_job(job.region, job.request, self.regions.default_spill_s)
        words = self.regions.waiting_reason(policy, self._now() - job.created_at)
        if words is None:
            return reason
        return words if not reason else f"{words}; {reason}"

    async def wait(
        self,
        p: Principal,
        job_id: str,
        wait_s: float,
        *,
        known: JobView | JobRecord | None = None,
    ) -> JobView:
        """The job once terminal, or as it is after ``wait_s`` (<= max_wait_s) seconds.

        Reads: the job is read at the start (not when ``known``, the view or record a submit of
        this replica just answered, says it is not terminal yet) and again after each
        ``poll_interval_s`` without a wake-up. A wake-up comes with the terminal record when
        this replica committed it (``FinishedRecords``): no read back; a wake-up without one
        (a non-terminal transition here) needs no read either."""
        p.require("jobs:read")
        deadline = time.monotonic() + max(0.0, min(wait_s, self._settings.max_wait_s))
        read = known is None or known.status in TERMINAL_STATUSES
        with self.wakeups.watch([job_key(job_id)]) as changed:
            while True:
                changed.clear()  # before the read: a change committed after it wakes us
                storage_budget.renew()  # each round of a long poll has its own budget
                left = deadline - time.monotonic()
                job: JobRecord | None = self._finished.get(job_id)
                if job is not None:
                    job = self._visible(p, job_id, job)
                elif read or left <= 0:
                    job = await self._load_shared(p, job_id)
                    left = deadline - time.monotonic()
                if job is not None and (job.status in TERMINAL_STATUSES or left <= 0):
                    if job.status != "QUEUED" and (job.runner_id is None or not self.cold_host):
                        return self.view(job)  # nothing to look up: no thread
                    return await self.offload(self._with_reason, job)
                await sleep_or_wake(changed, min(self._settings.poll_interval_s, left))
                read = not changed.is_set()  # a poll round; a wake-up here has no news

    def list_jobs(
        self, p: Principal, status: str | None, model: str | None, limit: int, cursor: str | None
    ) -> JobList:
        """The caller's tenant's jobs, newest first (admins: every tenant's)."""
        p.require("jobs:read")
        tenant = None if p.is_admin else p.tenant
        found, next_cursor = self._store.jobs.list_jobs(
            tenant, status, model, max(1, min(limit, MAX_LIST)), cursor
        )
        return JobList(jobs=[self.view(j) for j in found], next_cursor=next_cursor)

    # ------------------------------------------------------------------ cancel
    def cancel(self, p: Principal, job_id: str) -> JobView:
        """QUEUED or RUNNING -> CANCELLED; Conflict when already terminal."""
        p.require("jobs:write")
        for _ in range(5):
            job = self._load(p, job_id)
            if job.status in TERMINAL_STATUSES:
                raise Conflict(f"job {job_id} is already {job.status}")
            done: JobRecord | None
            if job.status == "QUEUED":
                done = self._cancel_queued(job, "cancelled by the user")
            else:
                assert job.lease_token is not None
                done = self._store.jobs.finish_running(
                    job.id,
                    job.lease_token,
                    "CANCELLED",
                    now=self._now(),
                    error={"code": "cancelled", "message": "cancelled by the user"},
                )
                if done is not None:
                    if job.lease_key:
                        self._store.queue.delete_marker(*job.lease_key)
                    self._ops.delete_ttl_marker(job)
                    self._transitioned(done, "RUNNING")
            if done is not None:
                return self.view(done)
        raise Conflict(f"job {job_id} kept changing; try again")

    def cancelled_among(self, job_ids: list[str]) -> list[str]:
        """The ids among ``job_ids`` whose job is now CANCELLED (heartbeat ``cancel_jobs``)."""
        statuses = self._store.jobs.job_statuses([i for i in job_ids if i.startswith("job_")])
        return [i for i in dict.fromkeys(job_ids) if statuses.get(i) == "CANCELLED"]

    def outputs_ref(self, p: Principal, job_id: str) -> str | None:
        """The bucket key of the outputs a job left in the bucket (None: inline, or none);
        404 where ``get`` would be."""
        p.require("jobs:read")
        return self._load(p, job_id).outputs_ref

    def logs(self, p: Principal, job_id: str) -> JobLogs:
        """``GET /v1/jobs/{id}/logs``: the logs its runner sent with its result (empty until
        it has one, or when the runner sent none); 404 where ``get`` would be."""
        p.require("jobs:read")
        job = self._load(p, job_id)
        info = job.run_info or {}
        ref = info.get("logs_ref")
        out = JobLogs(id=job.id, status=job.status)
        if "logs" in info:  # short logs live in the record itself
            out.logs = str(info["logs"])
        elif ref:
            doc = self._blobs.get_json(ref) or {}
            out.logs = str(doc.get("logs") or "")
            out.truncated = bool(doc.get("truncated"))
        return out
