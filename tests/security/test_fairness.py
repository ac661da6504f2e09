"""Fair leasing across tenants (issue 12 item 2): a tenant flooding a shared model at the top
priority no longer starves the others; tenants share runners by weight; max_running holds
a tenant's extra jobs queued. Service level on the embedded store (fast); the DynamoDB run is
in tests/contract/test_limit_stores.py."""

from __future__ import annotations

from collections import Counter
from typing import Any

from gpufleet.wire import QuotaSpec

from control_plane.services.jobs import JobService
from tests.contract.fleet import job, lease, principal, push_model, services, succeed

OWNER = principal("ops")
FLOOD = principal("flood", "admin")  # admins may submit to any tenant's model: a shared model
SMALL = principal("small", "admin")
ROOT = principal("root", "admin")


def _fleet(settings: Any, stores: Any) -> JobService:
    jobs, models = services(settings, stores)
    push_model(models, OWNER)
    return jobs


def _run(jobs: JobService, n: int, max_jobs: int = 1) -> Counter[str]:
    """Lease (and finish) ``n`` jobs on one runner; which tenant each belonged to."""
    got: Counter[str] = Counter()
    done = 0
    while done < n:
        leased = lease(jobs, max_jobs=min(max_jobs, n - done))
        assert leased, f"nothing to lease after {done}"
        for one in leased:
            got[jobs.get(ROOT, one.id).tags["t"]] += 1
            succeed(jobs, one)
        done += len(leased)
    return got


def test_flood_at_top_priority_does_not_starve_another_tenant(settings: Any, stores: Any) -> None:
    jobs = _fleet(settings, stores)
    jobs.submit_batch(FLOOD, [job(priority=100, tags={"t": "flood"}) for _ in range(60)])
    jobs.submit_batch(SMALL, [job(priority=0, tags={"t": "small"}) for _ in range(20)])
    # Strict global priority would run 60 flood jobs first; equal weights share the runner.
    got = _run(jobs, 40)
    assert got == {"flood": 20, "small": 20}
    # once small is served, flood gets the runner whole
    assert _run(jobs, 10) == {"flood": 10}


def test_priority_orders_jobs_within_a_tenant(settings: Any, stores: Any) -> None:
    jobs = _fleet(settings, stores)
    low = jobs.submit(SMALL, job(priority=1, tags={"t": "small"}))[0].id
    high = jobs.submit(SMALL, job(priority=9, tags={"t": "small"}))[0].id
    jobs.submit(FLOOD, job(priority=100, tags={"t": "flood"}))
    order = [one.id for _ in range(3) for one in lease(jobs)]
    assert order.index(high) < order.index(low)


def test_tenants_share_by_weight(settings: Any, stores: Any) -> None:
    jobs = _fleet(settings, stores)
    jobs.quotas.put_quota(ROOT, "small", QuotaSpec(weight=3))
    jobs.submit_batch(FLOOD, [job(priority=100, tags={"t": "flood"}) for _ in range(60)])
    jobs.submit_batch(SMALL, [job(priority=0, tags={"t": "small"}) for _ in range(60)])
    got = _run(jobs, 40, max_jobs=4)
    assert got == {"small": 30, "flood": 10}


def test_max_running_holds_the_rest_queued(settings: Any, stores: Any) -> None:
    jobs = _fleet(settings, stores)
    jobs.quotas.put_quota(ROOT, "flood", QuotaSpec(max_running=2))
    jobs.submit_batch(FLOOD, [job(priority=100, tags={"t": "flood"}) for _ in range(10)])
    first = lease(jobs, max_jobs=5)
    assert len(first) == 2  # the quota, though 10 are queued and 5 were asked for
    assert lease(jobs, max_jobs=5) == []
    held = jobs.list_jobs(ROOT, "QUEUED", None, 1, None).jobs[0].id
    assert "max_running" in (jobs.get(ROOT, held).waiting_reason or "")
    jobs.submit(SMALL, job(tags={"t": "small"}))
    # another tenant's job still runs (seen once the read-ahead of the queue heads, full of
    # flood's held jobs, is re-read: within its TTL, 1 s)
    [other] = lease(jobs, max_jobs=5, wait_s=5)
    assert jobs.quotas.load("flood").running == 2 and jobs.quotas.load("small").running == 1
    succeed(jobs, first[0])
    assert len(lease(jobs, max_jobs=5, wait_s=5)) == 1  # one slot freed
    view = jobs.quotas.get_quota(ROOT, "flood")
    assert (view.running, view.queued, view.max_running) == (2, 7, 2)
    assert other.id


def test_read_depth_bounds_what_fair_leasing_sees(settings: Any, stores: Any) -> None:
    """A flood deeper than the read-ahead hides the other tenant's jobs (the documented
    limit); a read depth above the flood's depth restores the fair share."""
    one_shard = settings.model_copy(update={"queue_shards": 1, "queue_read_depth": 50})
    jobs = _fleet(one_shard, stores)
    jobs.submit_batch(FLOOD, [job(priority=100, tags={"t": "flood"}) for _ in range(80)])
    jobs.submit_batch(SMALL, [job(priority=0, tags={"t": "small"}) for _ in range(10)])
    assert _run(jobs, 10) == {"flood": 10}  # small's jobs sit behind 70 > 50 of flood's
    deeper = _fleet(one_shard.model_copy(update={"queue_read_depth": 100}), stores)
    assert _run(deeper, 20) == {"flood": 10, "small": 10}
