"""The documented semantics of the job service under faults, on both stores (the embedded
SQLite store and DynamoDB on moto over HTTP). docs/failure_modes.md names each guarantee
next to the test here that proves it.

- a job past its ``timeout_s`` ends once with a ``timeout`` error; it is never run again
  (unless ``retry_timed_out_jobs`` asks for it);
- a batch submit with an Idempotency-Key is replayed to the same ids, and a replay after a
  crash mid-batch completes the batch (all of it, once);
- no index item outlives its job: the queue-TTL and lease markers go when the job commits;
- every commit is logged (``job … committed``), a lost lease is not a cancellation.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import pytest

from control_plane import clock
from control_plane.errors import Conflict, StaleLease, Unavailable
from control_plane.services import jobs_submit as jobs_module
from control_plane.services.jobs import JobService
from tests.conftest import STORE_KINDS
from tests.contract.fleet import job, lease, principal, push_model, services, succeed
from tests.helpers.clock import FakeClock

USER = principal("acme")
pytestmark = pytest.mark.parametrize("store_kind", STORE_KINDS)


def _jobs(
    settings: Any, stores: Any, now: Callable[[], float] = clock.now, **overrides: Any
) -> JobService:
    jobs, models = services(settings.model_copy(update=overrides), stores, now)
    push_model(models, USER)
    return jobs


def _markers(stores: Any) -> list[Any]:
    """Every lease and queue-TTL marker in the store (due or not)."""
    queue = stores.jobs.queue
    keys = queue.keys
    far = keys.due_bound(time.time() + 10 * 365 * 86400)
    out: list[Any] = []
    for n in range(4):
        for shard in (keys.lease_shard(n), keys.ttl_shard(n)):
            out.extend(queue.due_markers(shard, far, 1000, None))
    return out


# ------------------------------------------------------------------ finding 2: timeouts


def test_a_job_past_its_timeout_ends_once_and_is_not_run_again(settings: Any, stores: Any) -> None:
    """The lease is capped at the attempt's deadline; when it runs out there (the runner was
    still working on it), the sweep ends the job FAILED/timeout instead of requeueing it, and
    the runner's own late timeout result is answered as that same outcome."""
    now = FakeClock()
    jobs = _jobs(settings, stores, now, lease_duration_s=30.0)
    view, _ = jobs.submit(USER, job(timeout_s=1, max_attempts=3))
    [leased] = lease(jobs)
    now.advance(1.1)
    swept = jobs.sweep()
    assert swept["requeued"] == 0, swept
    done = jobs.get(USER, view.id)
    assert done.status == "FAILED" and done.error and done.error.code == "timeout"
    assert done.attempts == 1
    assert lease(jobs) == []  # never leased again
    # The runner's own timeout result, arriving late, is not a conflict: the same outcome.
    from gpufleet.wire import CompleteRequest, ErrorInfo

    late = CompleteRequest(
        lease_token=leased.lease_token,
        status="FAILED",
        error=ErrorInfo(code="timeout", message="job exceeded its timeout of 1s"),
    )
    assert jobs.complete("run_1", view.id, late).status == "FAILED"
    # A success that came too late is refused (the job already ended).
    with pytest.raises(StaleLease):
        succeed(jobs, leased)


def test_a_runner_lost_before_the_deadline_is_still_requeued(settings: Any, stores: Any) -> None:
    now = FakeClock()
    jobs = _jobs(settings, stores, now, lease_duration_s=1.0)
    view, _ = jobs.submit(USER, job(timeout_s=60, max_attempts=2))
    lease(jobs)
    now.advance(1.1)
    assert jobs.sweep()["requeued"] == 1
    [again] = lease(jobs)
    assert again.id == view.id and again.attempt == 2


def test_retry_timed_out_jobs_setting_requeues_them(settings: Any, stores: Any) -> None:
    now = FakeClock()
    jobs = _jobs(settings, stores, now, lease_duration_s=30.0, retry_timed_out_jobs=True)
    view, _ = jobs.submit(USER, job(timeout_s=1, max_attempts=2))
    lease(jobs)
    now.advance(1.1)
    assert jobs.sweep()["requeued"] == 1
    [again] = lease(jobs)
    assert again.attempt == 2
    now.advance(1.1)
    jobs.sweep()
    done = jobs.get(USER, view.id)
    assert done.status == "FAILED" and done.error and done.error.code == "timeout"


# ------------------------------------------------------------------ finding 1: batch keys


def test_batch_submit_with_a_key_replays_the_same_ids(settings: Any, stores: Any) -> None:
    jobs = _jobs(settings, stores)
    reqs = [job(priority=i % 3) for i in range(7)]
    first = jobs.submit_batch(USER, reqs, "batch-1")
    again = jobs.submit_batch(USER, reqs, "batch-1")
    assert again == first and len(set(first)) == 7
    assert len(jobs.list_jobs(USER, None, None, 100, None).jobs) == 7
    assert jobs.queue_depths() == {"add_sub": 7}
    with pytest.raises(Conflict):
        jobs.submit_batch(USER, reqs[:6], "batch-1")
    other = jobs.submit_batch(USER, reqs, "batch-2")
    assert not set(other) & set(first)
    # A key names one request of a tenant: a single submit with a batch's key is refused.
    with pytest.raises(Conflict):
        jobs.submit(USER, reqs[0], "batch-1")
    view, created = jobs.submit(principal("root", "admin"), reqs[0], "batch-1")  # per tenant
    assert created and view.id not in first


def test_a_batch_cut_short_is_completed_by_its_replay(
    settings: Any, stores: Any, store_kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A crash mid-batch (here: the store fails after the key was claimed and part of the
    jobs written, as a DynamoDB BatchWriteItem cut short would). On SQLite the key and the
    jobs are one transaction: nothing stays, and the replay is a first submit. On DynamoDB
    the key stays bound; a replay within the grace answers 503 (the first request may still
    be writing), a later one writes exactly the missing jobs and answers the same ids."""
    jobs = _jobs(settings, stores)
    reqs = [job() for _ in range(30)]
    real = stores.jobs.jobs.create_jobs

    def half_then_crash(batch: list[Any]) -> None:
        real(batch[: len(batch) // 2])
        raise RuntimeError("process killed mid-batch")

    monkeypatch.setattr(stores.jobs.jobs, "create_jobs", half_then_crash)
    with pytest.raises(RuntimeError):
        jobs.submit_batch(USER, reqs, "cut")
    monkeypatch.setattr(stores.jobs.jobs, "create_jobs", real)
    if store_kind == "sqlite":
        assert jobs.list_jobs(USER, None, None, 100, None).jobs == []  # rolled back whole
    else:
        assert len(jobs.list_jobs(USER, None, None, 100, None).jobs) == 15
        with pytest.raises(Unavailable) as wait:
            jobs.submit_batch(USER, reqs, "cut")
        assert wait.value.retry_after >= 1
        monkeypatch.setattr(jobs_module, "BATCH_REPLAY_GRACE_S", 0.0)
    ids = jobs.submit_batch(USER, reqs, "cut")
    assert jobs.submit_batch(USER, reqs, "cut") == ids
    assert len(set(ids)) == 30
    listed = jobs.list_jobs(USER, None, None, 100, None).jobs
    assert sorted(j.id for j in listed) == sorted(ids)
    assert all(j.status == "QUEUED" for j in listed)
    if store_kind == "sqlite":  # DynamoDB: the crash skipped the depth count of the first 15
        assert sum(jobs.queue_depths().values()) == 30
    got = [j.id for j in lease(jobs, max_jobs=100)]
    assert sorted(got) == sorted(ids)  # each leased once: no duplicate queue entries


# ------------------------------------------------------------------ finding 5: signals


def test_markers_go_when_the_job_commits(settings: Any, stores: Any) -> None:
    jobs = _jobs(settings, stores)
    done_ids = []
    for _ in range(3):
        jobs.submit(USER, job())
    for leased in lease(jobs, max_jobs=3):
        succeed(jobs, leased)
        done_ids.append(leased.id)
    cancelled, _ = jobs.submit(USER, job())
    jobs.cancel(USER, cancelled.id)
    left = [m for m in _markers(stores) if m.job_id in {*done_ids, cancelled.id}]
    assert left == []


def test_every_commit_is_logged(
    settings: Any, stores: Any, caplog: pytest.LogCaptureFixture
) -> None:
    jobs = _jobs(settings, stores)
    jobs.submit(USER, job())
    [leased] = lease(jobs)
    with caplog.at_level(logging.INFO, logger="control_plane.services.jobs"):
        succeed(jobs, leased)
    lines = [r.getMessage() for r in caplog.records if "committed" in r.getMessage()]
    assert lines and leased.id in lines[0] and "SUCCEEDED" in lines[0] and "run_1" in lines[0]
