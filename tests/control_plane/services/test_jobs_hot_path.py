"""The job hot path's shortcuts keep the semantics (SQLite store, reads counted):

- a wait woken by a terminal commit of this replica answers from that record (no read back);
- a complete of a job this replica leased reads nothing first, and stays fenced: a retry is
  answered committed, a cancelled or re-leased job 409;
- a keyed submit's claim and its job commit together (one transaction);
- the lease read-ahead trusts an empty shard briefly, never past a local submit.
"""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from gpufleet.wire import CompleteItem, CompleteRequest, Tensor

from control_plane.errors import StaleLease, Unavailable
from control_plane.services.jobs import JobService
from control_plane.services.queue_heads import QueueHeads
from control_plane.storage.protocols import QueueEntry
from tests.contract.fleet import job, lease, principal, push_model, services, succeed
from tests.helpers.clock import FakeClock

USER = principal("acme")
OUT = [Tensor(name="OUTPUT0", datatype="FP32", shape=[1, 4], data=[0, 2, 4, 6])]


class Reads:
    """Counts the job reads (``get_job``/``get_jobs``) of a store."""

    def __init__(self, jobs: JobService, monkeypatch: pytest.MonkeyPatch) -> None:
        self.ids: list[str] = []
        table = jobs._store.jobs
        get_job, get_jobs = table.get_job, table.get_jobs

        def one(job_id: str) -> Any:
            self.ids.append(job_id)
            return get_job(job_id)

        def many(job_ids: list[str]) -> Any:
            self.ids.extend(job_ids)
            return get_jobs(job_ids)

        monkeypatch.setattr(table, "get_job", one)
        monkeypatch.setattr(table, "get_jobs", many)
        # the shared reads of waits captured get_jobs at construction
        monkeypatch.setattr(jobs._reads, "_read_many", many)


@pytest.fixture
def jobs(settings: Any, stores: Any) -> JobService:
    svc, models = services(settings.model_copy(update={"poll_interval_s": 5.0}), stores)
    push_model(models, USER)
    return svc


def test_a_woken_wait_answers_from_the_committed_record(
    jobs: JobService, monkeypatch: pytest.MonkeyPatch
) -> None:
    view, _ = jobs.submit(USER, job())
    reads = Reads(jobs, monkeypatch)

    async def scenario() -> Any:
        waiter = asyncio.create_task(jobs.wait(USER, view.id, 10, known=view))
        await asyncio.sleep(0.05)
        [leased] = await asyncio.to_thread(lease, jobs)
        await asyncio.sleep(0.05)  # the wait is woken by the claim: nothing to read
        started = time.monotonic()
        await asyncio.to_thread(succeed, jobs, leased)
        done = await waiter
        return done, time.monotonic() - started

    done, after = asyncio.run(scenario())
    assert done.status == "SUCCEEDED" and done.outputs and after < 2  # not the 5 s poll
    assert reads.ids == []  # known at the start, woken with the record at the end


def test_a_wait_still_reads_what_another_replica_committed(
    jobs: JobService, settings: Any, stores: Any
) -> None:
    other, _ = services(settings, stores)  # a second replica on the same store
    view, _ = jobs.submit(USER, job())
    [leased] = lease(other)
    succeed(other, leased)
    done = asyncio.run(jobs.wait(USER, view.id, 10))  # the first read sees it
    assert done.status == "SUCCEEDED"
    fast = jobs.submit(USER, job())[0]
    fast_jobs, _ = services(settings.model_copy(update={"poll_interval_s": 0.05}), stores)

    async def scenario() -> Any:
        waiter = asyncio.create_task(fast_jobs.wait(USER, fast.id, 10, known=fast))
        [leased] = await asyncio.to_thread(lease, other)
        await asyncio.to_thread(succeed, other, leased)
        return await waiter

    assert asyncio.run(scenario()).status == "SUCCEEDED"  # a poll round read it


def test_complete_of_a_job_leased_here_reads_nothing_and_stays_fenced(
    jobs: JobService, monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b, c = (jobs.submit(USER, job())[0] for _ in range(3))
    leased = {x.id: x for x in lease(jobs, max_jobs=3)}
    reads = Reads(jobs, monkeypatch)
    assert succeed(jobs, leased[a.id]).status == "SUCCEEDED"
    assert reads.ids == []
    # a retry of that commit (its answer lost): read, and answered as committed again
    assert succeed(jobs, leased[a.id]).status == "SUCCEEDED"
    assert reads.ids == [a.id]
    # cancelled meanwhile: the conditional commit fails, the job is read, 409
    jobs.cancel(USER, b.id)
    reads.ids.clear()
    with pytest.raises(StaleLease):
        succeed(jobs, leased[b.id])
    assert reads.ids == [b.id]
    # in a batch: one committed from the cache, one refused, the same job twice
    items = [
        CompleteItem(job_id=c.id, lease_token=leased[c.id].lease_token, status="SUCCEEDED"),
        CompleteItem(job_id=b.id, lease_token=leased[b.id].lease_token, status="SUCCEEDED"),
        CompleteItem(job_id=c.id, lease_token=leased[c.id].lease_token, status="FAILED"),
    ]
    answers = jobs.complete_batch("run_1", items)
    assert [x.status for x in answers] == ["committed", "conflict", "conflict"]
    assert jobs.get(USER, c.id).status == "SUCCEEDED"


def test_an_expired_and_re_leased_job_refuses_the_first_runner(settings: Any, stores: Any) -> None:
    now = FakeClock()
    jobs, models = services(settings.model_copy(update={"lease_duration_s": 1.0}), stores, now)
    push_model(models, USER)
    view, _ = jobs.submit(USER, job())
    [first] = lease(jobs, runner="run_a")
    jobs.extend("run_a", view.id, first.lease_token)  # the cached record follows the marker
    now.advance(5)
    assert jobs.sweep()["requeued"] == 1
    [second] = lease(jobs, runner="run_b")
    with pytest.raises(StaleLease):
        succeed(jobs, first, runner="run_a")
    assert succeed(jobs, second, runner="run_b").status == "SUCCEEDED"
    done = CompleteRequest(lease_token=second.lease_token, status="FAILED")
    with pytest.raises(StaleLease):  # never a second, different result
        jobs.complete("run_b", view.id, done)


def test_a_keyed_submit_claims_its_key_in_the_jobs_transaction(
    jobs: JobService, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(job: Any) -> bool:
        raise Unavailable("disk full")

    monkeypatch.setattr(jobs._store.jobs, "create_job", broken)
    with pytest.raises(Unavailable):
        jobs.submit(USER, job(), "key-1")
    monkeypatch.undo()
    # nothing of the first attempt stayed: the retry makes the job now, under the same key
    view, created = jobs.submit(USER, job(), "key-1")
    assert created and jobs.get(USER, view.id).status == "QUEUED"
    again, created = jobs.submit(USER, job(), "key-1")
    assert again.id == view.id and not created


class Shard:
    """``head`` of one in-memory shard, counting reads."""

    def __init__(self) -> None:
        self.entries: list[QueueEntry] = []
        self.reads = 0

    def head(self, shard: str, limit: int, after_sk: str | None = None) -> list[QueueEntry]:
        self.reads += 1
        return list(self.entries[:limit])


def test_an_empty_shard_is_trusted_briefly_and_never_past_a_local_submit() -> None:
    store = Shard()
    with ThreadPoolExecutor(2) as pool:
        clock = FakeClock()
        heads = QueueHeads(store, pool, ttl_s=60, empty_ttl_s=0.3, monotonic=clock)  # type: ignore[arg-type]
        take = lambda: heads.take(["m#0"], lambda e: True, 1)  # noqa: E731
        assert take() == [] and take() == [] and store.reads == 1  # trusted empty
        store.entries.append(QueueEntry("m#0", "sk1", "job_1", "", "", 1e12, "tok"))
        heads.queued("m#0")  # this replica queued it: read at once
        assert [e.job_id for e in take()] == ["job_1"] and store.reads == 2
        store.entries.clear()
        # that read held the whole shard and its one entry was taken here: no read
        assert take() == [] and store.reads == 2
        store.entries.append(QueueEntry("m#0", "sk2", "job_2", "", "", 1e12, "tok2"))
        assert take() == []  # another replica's job: not seen within empty_ttl_s ...
        clock.advance(0.35)
        assert [e.job_id for e in take()] == ["job_2"]  # ... but right after


def test_a_shard_emptied_by_takes_is_trusted_only_when_its_read_held_all_of_it() -> None:
    store = Shard()
    with ThreadPoolExecutor(2) as pool:
        clock = FakeClock()
        heads = QueueHeads(store, pool, ttl_s=60, depth=2, empty_ttl_s=0.3, monotonic=clock)  # type: ignore[arg-type]
        take = lambda: heads.take(["m#0"], lambda e: True, 1)  # noqa: E731
        store.entries[:] = [
            QueueEntry("m#0", f"sk{i}", f"job_{i}", "", "", 1e12, f"tok{i}") for i in range(3)
        ]
        # a read of ``depth`` entries: the shard may hold more, so emptying it reads again
        assert [e.job_id for e in take()] == ["job_0"] and store.reads == 1
        assert [e.job_id for e in take()] == ["job_1"] and store.reads == 1
        del store.entries[:2]  # (claimed)
        assert [e.job_id for e in take()] == ["job_2"] and store.reads == 2
        # that read (one entry, under ``depth``) held the whole shard: emptied, trusted
        assert take() == [] and store.reads == 2
        store.entries.clear()
        store.entries.append(QueueEntry("m#0", "sk9", "job_9", "", "", 1e12, "tok9"))
        heads.queued("m#0")  # a local submit: read at once
        assert [e.job_id for e in take()] == ["job_9"] and store.reads == 3
        store.entries.clear()
        # another replica's job: not seen while the emptied read is trusted ...
        store.entries.append(QueueEntry("m#0", "skA", "job_A", "", "", 1e12, "tokA"))
        assert take() == [] and store.reads == 3
        clock.advance(0.35)  # ... but once that trust ran out
        assert [e.job_id for e in take()] == ["job_A"] and store.reads == 4
        store.entries[:] = [QueueEntry("m#0", "skB", "job_B", "", "", 1e12, "tokB")]
        heads.queued("m#0")
        assert [e.job_id for e in take()] == ["job_B"] and store.reads == 5
        # a job queued here after a read began (job_C), then the read's entries taken: the
        # emptied read is not trusted (it may have missed job_C)
        store.entries[:] = [
            QueueEntry("m#0", f"sk{c}", f"job_{c}", "", "", 1e12, f"tok{c}") for c in "DE"
        ]
        clock.advance(0.35)
        heads.queued("m#0")
        assert [e.job_id for e in take()] == ["job_D"] and store.reads == 6
        heads.queued("m#0")  # job_C
        store.entries[:] = [QueueEntry("m#0", "skC", "job_C", "", "", 1e12, "tokC")]
        assert [e.job_id for e in take()] == ["job_E"] and store.reads == 6
        assert [e.job_id for e in take()] == ["job_C"] and store.reads == 7


def test_a_read_that_raced_a_local_submit_marks_nothing_empty() -> None:
    store = Shard()
    gate, started = threading.Event(), threading.Event()
    head = store.head

    def slow(shard: str, limit: int, after_sk: str | None = None) -> list[QueueEntry]:
        got = head(shard, limit)
        started.set()
        gate.wait(5)
        return got

    store.head = slow  # type: ignore[method-assign]
    with ThreadPoolExecutor(2) as pool:
        heads = QueueHeads(store, pool, ttl_s=60, empty_ttl_s=60)  # type: ignore[arg-type]
        racing = pool.submit(heads.take, ["m#0"], lambda e: True, 1)
        assert started.wait(5)
        store.entries.append(QueueEntry("m#0", "sk1", "job_1", "", "", 1e12, "tok"))
        heads.queued("m#0")  # committed while the read was under way
        gate.set()
        assert racing.result(5) == []
        assert [e.job_id for e in heads.take(["m#0"], lambda e: True, 1)] == ["job_1"]
