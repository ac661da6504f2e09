"""JobService on the embedded store (a few tests also on DynamoDB + S3): submit, idempotency,
get/list/cancel, the lease protocol, expiry, TTL and backpressure."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from gpufleet.wire import CompleteRequest, ErrorInfo, Tensor

from control_plane import clock
from control_plane.errors import (
    Conflict,
    ModelNotFound,
    NotFound,
    PayloadTooLarge,
    RateLimited,
    StaleLease,
)
from control_plane.services.jobs import JobService
from control_plane.services.models import ModelService
from tests.conftest import STORE_KINDS
from tests.contract.fleet import (
    add_sub_files,
    job,
    lease,
    principal,
    push_model,
    services,
    succeed,
)
from tests.helpers.clock import FakeClock
from tests.helpers.spy import returned

USER = principal("acme")


@pytest.fixture
def fleet(settings: Any, stores: Any) -> tuple[JobService, ModelService]:
    jobs, models = services(settings, stores)
    push_model(models, USER)
    return jobs, models


def _with(
    settings: Any, stores: Any, now: Callable[[], float] = clock.now, **overrides: Any
) -> JobService:
    jobs, models = services(settings.model_copy(update=overrides), stores, now)
    push_model(models, USER)
    return jobs


@pytest.mark.parametrize("store_kind", STORE_KINDS)
def test_submit_get_and_complete_records_timings(fleet: Any) -> None:
    jobs, _ = fleet
    seen: list[tuple[str, str | None]] = []
    jobs.transitions.on_view(lambda v, prev: seen.append((v.status, prev)))
    view, created = jobs.submit(USER, job(tags={"team": "a"}))
    assert created and view.status == "QUEUED" and view.id.startswith("job_")
    assert jobs.get(USER, view.id).tags == {"team": "a"}
    [leased] = lease(jobs)
    assert leased.id == view.id and leased.model_version == "1" and leased.attempt == 1
    assert leased.inputs[0].name == "INPUT0"
    running = jobs.get(USER, view.id)
    assert running.status == "RUNNING" and running.runner_id == "run_1"
    assert running.model_version == "1" and running.queue_ms is not None
    assert succeed(jobs, leased).status == "SUCCEEDED"
    done = jobs.get(USER, view.id)
    assert done.status == "SUCCEEDED" and done.outputs and done.outputs[0].data == [0, 2, 4, 6]
    assert done.run_ms is not None and done.finished_at is not None
    assert seen == [("QUEUED", None), ("RUNNING", "QUEUED"), ("SUCCEEDED", "RUNNING")]


def test_other_tenant_gets_404_and_admin_sees_all(fleet: Any) -> None:
    jobs, _ = fleet
    view, _ = jobs.submit(USER, job())
    with pytest.raises(NotFound):
        jobs.get(principal("other"), view.id)
    assert jobs.get(principal("root", "admin"), view.id).id == view.id
    with pytest.raises(ModelNotFound):  # the model is acme's: invisible to other tenants
        jobs.submit(principal("other"), job())


def test_unknown_model_or_version_is_model_not_found(fleet: Any) -> None:
    jobs, _ = fleet
    with pytest.raises(ModelNotFound) as exc:
        jobs.submit(USER, job(model="nope"))
    assert exc.value.code == "model_not_found"
    with pytest.raises(ModelNotFound):
        jobs.submit(USER, job(model_version="7"))


@pytest.mark.parametrize("store_kind", STORE_KINDS)
def test_idempotent_submit_40_parallel_one_job(fleet: Any) -> None:
    jobs, _ = fleet
    req = job()
    with ThreadPoolExecutor(max_workers=40) as pool:
        results = list(pool.map(lambda _: jobs.submit(USER, req, "key-1"), range(40)))
    ids = {view.id for view, _ in results}
    assert len(ids) == 1
    assert sum(created for _, created in results) == 1
    assert len(jobs.list_jobs(USER, None, None, 100, None).jobs) == 1
    assert jobs.queue_depths() == {"add_sub": 1}
    assert len(lease(jobs, max_jobs=10)) == 1
    with pytest.raises(Conflict):
        jobs.submit(USER, job(priority=9), "key-1")
    other, created = jobs.submit(principal("root", "admin"), req, "key-1")  # per-tenant keys
    assert created and other.id not in ids


def test_priorities_then_fifo(fleet: Any) -> None:
    jobs, _ = fleet
    order = [(0, "a"), (5, "b"), (0, "c"), (9, "d"), (5, "e")]
    ids = {}
    for prio, tag in order:
        ids[jobs.submit(USER, job(priority=prio))[0].id] = tag
        time.sleep(0.002)
    got = [ids[j.id] for j in lease(jobs, max_jobs=10)]
    assert got == ["d", "b", "e", "a", "c"]


def test_list_is_tenant_scoped_filtered_and_paged(fleet: Any) -> None:
    jobs, _ = fleet
    made = []
    for _ in range(5):  # ids order by millisecond: one submit per millisecond
        made.append(jobs.submit(USER, job())[0].id)
        time.sleep(0.002)
    jobs.cancel(USER, made[0])
    page1 = jobs.list_jobs(USER, None, None, 2, None)
    assert [j.id for j in page1.jobs] == made[::-1][:2] and page1.next_cursor
    page2 = jobs.list_jobs(USER, None, None, 2, page1.next_cursor)
    assert [j.id for j in page2.jobs] == made[::-1][2:4]
    cancelled = jobs.list_jobs(USER, "CANCELLED", None, 10, None)
    assert [j.id for j in cancelled.jobs] == [made[0]]
    assert jobs.list_jobs(principal("other"), None, None, 10, None).jobs == []
    assert len(jobs.list_jobs(USER, None, "add_sub", 100, None).jobs) == 5


def test_cancel_queued_running_and_terminal(fleet: Any) -> None:
    jobs, _ = fleet
    queued, _ = jobs.submit(USER, job())
    assert jobs.cancel(USER, queued.id).status == "CANCELLED"
    with pytest.raises(Conflict):
        jobs.cancel(USER, queued.id)
    assert lease(jobs) == []  # the queue entry went with it
    running, _ = jobs.submit(USER, job())
    [leased] = lease(jobs)
    assert jobs.cancel(USER, running.id).status == "CANCELLED"
    assert jobs.cancelled_among([running.id, queued.id, "job_x"]) == [running.id, queued.id]
    with pytest.raises(StaleLease):
        succeed(jobs, leased)
    assert jobs.queue_depths() == {"add_sub": 0}


def test_stale_lease_and_second_attempt(settings: Any, stores: Any) -> None:
    now = FakeClock()
    jobs = _with(settings, stores, now, lease_duration_s=1.0)
    view, _ = jobs.submit(USER, job())
    [first] = lease(jobs, runner="run_a")
    now.advance(1.1)
    assert jobs.sweep()["requeued"] == 1
    [second] = lease(jobs, runner="run_b")
    assert second.id == view.id and second.attempt == 2
    with pytest.raises(StaleLease):
        succeed(jobs, first, runner="run_a")
    with pytest.raises(StaleLease):
        jobs.extend("run_a", view.id, first.lease_token)
    assert succeed(jobs, second, runner="run_b").status == "SUCCEEDED"
    assert succeed(jobs, second, runner="run_b").status == "SUCCEEDED"  # a retried commit
    with pytest.raises(StaleLease):  # but never a second, different result
        jobs.complete(
            "run_b", view.id, CompleteRequest(lease_token=second.lease_token, status="FAILED")
        )
    assert jobs.get(USER, view.id).attempts == 2


def test_lease_expiry_requeues_then_attempts_exhausted(settings: Any, stores: Any) -> None:
    now = FakeClock()
    jobs = _with(settings, stores, now, lease_duration_s=1.0)
    view, _ = jobs.submit(USER, job(max_attempts=2))
    for attempt in (1, 2):
        [leased] = lease(jobs)
        assert leased.attempt == attempt
        now.advance(1.1)
        swept = jobs.sweep()
    assert swept == {"requeued": 0, "exhausted": 1, "timed_out": 0}
    failed = jobs.get(USER, view.id)
    assert failed.status == "FAILED" and failed.error and failed.error.code == "attempts_exhausted"
    assert lease(jobs) == []
    assert jobs.sweep() == {"requeued": 0, "exhausted": 0, "timed_out": 0}


def test_extend_is_capped_by_timeout_and_last_attempt_times_out(settings: Any, stores: Any) -> None:
    now = FakeClock()
    jobs = _with(settings, stores, now, lease_duration_s=5.0)
    view, _ = jobs.submit(USER, job(timeout_s=1, max_attempts=1))
    [leased] = lease(jobs)
    assert leased.deadline_at == leased.lease_expires_at  # min(lease, timeout)
    extended = jobs.extend("run_1", view.id, leased.lease_token)
    assert extended.lease_expires_at <= leased.deadline_at
    now.advance(1.1)
    with pytest.raises(StaleLease):
        jobs.extend("run_1", view.id, leased.lease_token)
    assert jobs.sweep()["exhausted"] == 1
    err = jobs.get(USER, view.id).error
    assert err is not None and err.code == "timeout"


def test_queue_ttl_times_out_by_sweep_and_lazily(settings: Any, stores: Any) -> None:
    now = FakeClock()
    jobs = _with(settings, stores, now)
    swept_job, _ = jobs.submit(USER, job(ttl_s=1))
    lazy_job, _ = jobs.submit(USER, job(ttl_s=1))
    now.advance(1.1)
    assert jobs.get(USER, lazy_job.id).status == "TIMED_OUT"
    assert jobs.sweep()["timed_out"] == 1
    view = jobs.get(USER, swept_job.id)
    assert view.status == "TIMED_OUT" and view.error and view.error.code == "ttl_expired"
    assert lease(jobs) == [] and jobs.queue_depths() == {"add_sub": 0}


def test_lease_filters_version_and_region(fleet: Any) -> None:
    jobs, models = fleet
    push_model(models, USER, files=add_sub_files(salt="v2"))  # version 2
    pinned, _ = jobs.submit(USER, job(model_version="1"))
    regional, _ = jobs.submit(USER, job(region="eu"))
    assert lease(jobs, version="2", max_jobs=5) == []
    [got] = lease(jobs, version="1", max_jobs=5)
    assert got.id == pinned.id
    [got] = lease(jobs, version="2", region="eu", max_jobs=5)
    assert got.id == regional.id and got.model_version == "2"


def test_lease_long_poll_returns_when_a_job_arrives(fleet: Any) -> None:
    jobs, _ = fleet

    async def scenario() -> Any:
        from gpufleet.wire import LeaseRequest, ModelRef

        req = LeaseRequest(models=[ModelRef(name="add_sub", version="1")], wait_s=5)
        looked = returned(jobs, "_lease_once")
        task = asyncio.create_task(jobs.lease("run_1", None, req))
        await asyncio.wait_for(looked.wait(), 10)  # found nothing: the long poll waits
        view, _ = await asyncio.to_thread(jobs.submit, USER, job())
        started = time.monotonic()
        got = await task
        return view, got, time.monotonic() - started

    view, got, after = asyncio.run(scenario())
    assert [j.id for j in got.jobs] == [view.id] and after < 2


def test_wait_returns_when_terminal(fleet: Any) -> None:
    jobs, _ = fleet
    view, _ = jobs.submit(USER, job())

    async def scenario() -> Any:
        waiter = asyncio.create_task(jobs.wait(USER, view.id, 10))
        [leased] = await asyncio.to_thread(lease, jobs)
        await asyncio.to_thread(succeed, jobs, leased)
        return await waiter

    assert asyncio.run(scenario()).status == "SUCCEEDED"
    queued, _ = jobs.submit(USER, job())
    started = time.monotonic()
    assert asyncio.run(jobs.wait(USER, queued.id, 0.3)).status == "QUEUED"
    assert time.monotonic() - started < 2


@pytest.mark.parametrize("store_kind", STORE_KINDS)
def test_large_outputs_go_to_the_bucket(settings: Any, stores: Any) -> None:
    jobs = _with(settings, stores, max_inline_bytes=1000)
    view, _ = jobs.submit(USER, job())
    [leased] = lease(jobs)
    big = Tensor(name="OUTPUT0", datatype="FP32", shape=[1, 400], data=[1.5] * 400)
    succeed(jobs, leased, outputs=[big])
    done = jobs.get(USER, view.id)
    assert done.outputs is None and done.outputs_url
    fetched = httpx.get(done.outputs_url)
    assert fetched.status_code == 200 and fetched.json()[0]["data"][:2] == [1.5, 1.5]


def test_failed_completion_keeps_the_error(fleet: Any) -> None:
    jobs, _ = fleet
    view, _ = jobs.submit(USER, job())
    [leased] = lease(jobs)
    jobs.complete(
        "run_1",
        view.id,
        CompleteRequest(
            lease_token=leased.lease_token,
            status="FAILED",
            error=ErrorInfo(code="triton_error", message="boom"),
        ),
    )
    got = jobs.get(USER, view.id)
    assert got.status == "FAILED" and got.error and got.error.code == "triton_error"


def test_backpressure_and_inline_limit(settings: Any, stores: Any) -> None:
    jobs = _with(settings, stores, max_queue_depth=2, max_inline_bytes=300)
    jobs.submit(USER, job())
    jobs.submit(USER, job())
    with pytest.raises(RateLimited) as exc:
        jobs.submit(USER, job())
    assert exc.value.retry_after >= 1
    with pytest.raises(PayloadTooLarge) as big:
        jobs.submit(USER, job(batch=8))
    assert "data_ref" in big.value.message


def test_submit_batch_all_validated_first(fleet: Any) -> None:
    jobs, _ = fleet
    with pytest.raises(Exception) as exc:
        jobs.submit_batch(USER, [job(), job(model="nope")])
    assert getattr(exc.value, "code", "") == "model_not_found"
    assert jobs.list_jobs(USER, None, None, 100, None).jobs == []
    ids = jobs.submit_batch(USER, [job(priority=i % 3) for i in range(30)])
    assert len(set(ids)) == 30 and jobs.queue_depths() == {"add_sub": 30}
    assert {j.id for j in lease(jobs, max_jobs=100)} == set(ids)
    assert jobs.queue_depths() == {"add_sub": 0}


def test_ping(fleet: Any) -> None:
    fleet[0].ping()


def test_a_spill_delay_is_never_cut_short_by_the_queue_keys_whole_milliseconds(
    settings: Any, stores: Any
) -> None:
    """A queue entry's created_at is read back from its sort key in whole milliseconds, so
    it may be up to 1 ms earlier than the job's: the lease waits the whole delay (and up to
    1 ms more), never less."""
    now = FakeClock(1_800_000_000.0006)  # 0.6 ms past a millisecond: the key drops it
    jobs = _with(settings, stores, now)
    view, _ = jobs.submit(
        USER,
        job(region="eu-west-2", regions_allowed=["eu-west-2", "us-east-1"], spill_after_s=2.0),
    )
    now.advance(1.9996)  # 2.0002 s after the key's millisecond, 1.9996 s after the job's
    assert lease(jobs, region="us-east-1") == []
    now.advance(0.0004)  # the whole delay, by the job's clock; the key can't tell yet
    assert lease(jobs, region="us-east-1") == []
    now.advance(0.0006)  # at most 1 ms late
    [got] = lease(jobs, region="us-east-1")
    assert got.id == view.id
    assert jobs.get(USER, view.id).queue_ms == 2000
