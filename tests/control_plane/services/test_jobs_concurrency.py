"""300 jobs, 24 concurrent claimers (threads, each its own lease loop): every job is leased
exactly once and completes exactly once; the depth counters end at zero. On the embedded
store (the DynamoDB adapter's conditional writes have their own contract tests); the
concurrent-commit test runs on both stores."""

from __future__ import annotations

import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from control_plane.errors import StaleLease
from tests.conftest import STORE_KINDS
from tests.contract.fleet import job, lease, principal, push_model, services, succeed

USER = principal("acme")
JOBS = 300
CLAIMERS = 24


@pytest.mark.slow
@pytest.mark.timeout(1200)  # ~1 min alone; several under a loaded 2-core CI machine
def test_300_jobs_24_claimers_each_leased_once(settings: Any, stores: Any) -> None:
    jobs, models = services(settings, stores)
    push_model(models, USER)
    ids: list[str] = []
    for start in range(0, JOBS, 100):
        ids += jobs.submit_batch(USER, [job(priority=i % 4) for i in range(start, start + 100)])
    assert jobs.queue_depths() == {"add_sub": JOBS}
    leased: list[tuple[str, str]] = []
    lock = threading.Lock()

    def claimer(n: int) -> None:
        empty = 0
        while empty < 3:
            got = lease(jobs, runner=f"run_{n}", max_jobs=3)
            if not got:
                empty += 1
                continue
            empty = 0
            for one in got:
                with lock:
                    leased.append((one.id, f"run_{n}"))
                succeed(jobs, one, runner=f"run_{n}")

    with ThreadPoolExecutor(max_workers=CLAIMERS) as pool:
        list(pool.map(claimer, range(CLAIMERS)))

    counts = Counter(job_id for job_id, _ in leased)
    assert set(counts) == set(ids)
    assert max(counts.values()) == 1, [j for j, c in counts.items() if c > 1]
    assert len({runner for _, runner in leased}) > 1
    assert jobs.queue_depths() == {"add_sub": 0}
    statuses = Counter(v.status for v in _all(jobs))
    assert statuses == {"SUCCEEDED": JOBS}


@pytest.mark.parametrize("store_kind", STORE_KINDS)
def test_a_committed_result_cannot_be_overwritten_concurrently(settings: Any, stores: Any) -> None:
    jobs, models = services(settings, stores)
    push_model(models, USER)
    jobs.submit(USER, job())
    [one] = lease(jobs)

    def commit(_: int) -> str:
        try:
            return succeed(jobs, one).status
        except StaleLease:
            return "stale"

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(commit, range(8)))
    assert results.count("SUCCEEDED") >= 1 and set(results) <= {"SUCCEEDED", "stale"}


def _all(jobs: Any) -> list[Any]:
    out, cursor = [], None
    while True:
        page = jobs.list_jobs(USER, None, None, 100, cursor)
        out += page.jobs
        cursor = page.next_cursor
        if not cursor:
            return out
