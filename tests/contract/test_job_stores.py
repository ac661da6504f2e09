"""Contract of the job, queue and idempotency stores on every backend (``backend`` in
conftest.py: the embedded SQLite store and DynamoDB on moto over HTTP), and of the model and
blob stores on moto: assert on state, and on who wins each conditional write."""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Callable
from dataclasses import replace
from typing import Any, TypeVar

import httpx
import pytest

from control_plane.errors import InvalidRequest, NotFound, Unavailable
from control_plane.storage.blobs import S3BlobStore
from control_plane.storage.dynamo_models import DynamoModelStore
from control_plane.storage.protocols import (
    IdempotencyRecord,
    IdempotencyStore,
    JobClaim,
    JobFinish,
    JobRecord,
    JobRecordStore,
    ModelVersionRecord,
    QueueEntry,
    QueueStore,
)

T = TypeVar("T")


def record(
    job_id: str = "job_1",
    tenant: str = "acme",
    created: float = 1000.0,
    *,
    model: str = "m",
    status: str = "QUEUED",
) -> JobRecord:
    return JobRecord(
        id=job_id,
        tenant=tenant,
        model=model,
        model_version=None,
        pinned=False,
        status=status,
        priority=0,
        created_at=created,
        timeout_s=60,
        ttl_s=600,
        max_attempts=3,
        region=None,
        request={"inputs": [{"name": "x"}], "tags": {"a": "b"}},
        queue_key=("m#0", "999#x"),
        queue_token="q1",
    )


def claim(
    jobs: JobRecordStore,
    token: str = "l1",  # noqa: S107
    queue_token: str = "q1",  # noqa: S107
    job_id: str = "job_1",
) -> Any:
    return jobs.claim_job(
        job_id,
        queue_token,
        lease_token=token,
        runner_id="r",
        version="1",
        now=2000.0,
        lease_expires_at=2060.0,
        lease_key=("lease#0", "k"),
    )


def race(n: int, fn: Callable[[int], T]) -> list[T]:
    """Run ``fn(0..n-1)`` on ``n`` threads released together; their results in order."""
    barrier = threading.Barrier(n)
    results: list[Any] = [None] * n
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            barrier.wait()
            results[i] = fn(i)
        except BaseException as exc:  # re-raised below, in the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return results


# ---------------------------------------------------------------------------------- jobs
def test_create_is_once_and_roundtrips(jobs: JobRecordStore) -> None:
    assert jobs.create_job(record())
    assert not jobs.create_job(record(tenant="other"))
    got = jobs.get_job("job_1")
    assert got == record()
    assert jobs.get_job("job_nope") is None
    full = record("job_2")
    full.model_version, full.pinned, full.region, full.priority = "3", True, "eu", 7
    jobs.create_job(full)
    assert jobs.get_job("job_2") == full


def test_create_jobs_in_batches(jobs: JobRecordStore) -> None:
    batch = [record(f"job_b{i:02d}", created=1000.0 + i) for i in range(30)]
    jobs.create_jobs(batch)
    assert [jobs.get_job(x.id) for x in batch] == batch
    jobs.create_jobs([])


def test_get_jobs_reads_many_in_one_call_each_page(jobs: JobRecordStore) -> None:
    batch = [record(f"job_g{i:03d}", created=1000.0 + i) for i in range(130)]  # > one page
    jobs.create_jobs(batch)
    ids = [x.id for x in batch]
    got = jobs.get_jobs([*ids, "job_nope", ids[0], "not-a-job"])
    assert got == {x.id: x for x in batch}
    assert jobs.get_jobs([]) == {}
    claim(jobs, queue_token="q1", job_id=ids[5])
    assert jobs.get_jobs([ids[5]])[ids[5]].status == "RUNNING"  # consistent, as get_job


def test_claim_is_won_once_and_fenced(jobs: JobRecordStore) -> None:
    jobs.create_job(record())
    assert claim(jobs, queue_token="other") is None
    won = claim(jobs)
    assert won and won.status == "RUNNING" and won.attempts == 1 and won.queue_token is None
    assert won.queue_key is None and won.lease_key == ("lease#0", "k")
    assert (won.lease_token, won.runner_id, won.model_version) == ("l1", "r", "1")
    assert (won.started_at, won.lease_expires_at) == (2000.0, 2060.0)
    assert jobs.get_job("job_1") == won
    assert claim(jobs, token="l2") is None
    assert claim(jobs, job_id="job_nope") is None
    assert jobs.extend_lease("job_1", "bad", "r", 3000.0, ("lease#0", "k2")) is None
    assert jobs.extend_lease("job_1", "l1", "other-runner", 3000.0, ("lease#0", "k2")) is None
    moved = jobs.extend_lease("job_1", "l1", "r", 3000.0, ("lease#0", "k2"))
    assert moved and moved.lease_key == ("lease#0", "k2") and moved.lease_expires_at == 3000.0
    assert not jobs.requeue_running("job_1", "l1", ("m#1", "s"), "q2", expired_before=2999.0)
    assert not jobs.requeue_running("job_1", "bad", ("m#1", "s"), "q2", expired_before=3000.0)
    assert jobs.requeue_running("job_1", "l1", ("m#1", "s"), "q2", expired_before=3000.0)
    requeued = jobs.get_job("job_1")
    assert requeued and requeued.status == "QUEUED" and requeued.queue_key == ("m#1", "s")
    assert requeued.queue_token == "q2" and requeued.lease_token is None
    assert requeued.lease_key is None and requeued.lease_expires_at is None
    assert requeued.runner_id is None and requeued.attempts == 1
    assert not jobs.requeue_running("job_1", "l1", ("m#1", "s"), "q3", expired_before=3000.0)
    assert jobs.extend_lease("job_1", "l1", "r", 4000.0, ("lease#0", "k3")) is None
    assert claim(jobs, queue_token="q1") is None  # the old queue token is spent
    again = claim(jobs, token="l3", queue_token="q2")
    assert again and again.attempts == 2
    assert jobs.finish_running("job_1", "l1", "SUCCEEDED", now=1.0) is None  # stale token
    assert requeued.commits == 0 and again.commits == 0
    done = jobs.finish_running("job_1", "l3", "SUCCEEDED", now=4000.0, outputs_json="[]")
    assert done and done.status == "SUCCEEDED" and done.outputs == []
    assert done.commits == 1  # the store's commit record: one finish of a running attempt
    assert jobs.finish_running("job_1", "l3", "FAILED", now=4001.0) is None
    assert jobs.extend_lease("job_1", "l3", "r", 5000.0, ("lease#0", "k4")) is None
    assert not jobs.requeue_running("job_1", "l3", ("m#1", "t"), "q4", expired_before=9e9)
    assert jobs.job_statuses(["job_1", "job_2"]) == {"job_1": "SUCCEEDED"}


def test_finish_running_records_the_result_once(jobs: JobRecordStore) -> None:
    jobs.create_job(record())
    claim(jobs)
    assert jobs.finish_running("job_1", "l1", "FAILED", now=1.0, expired_before=2059.9) is None
    done = jobs.finish_running(
        "job_1",
        "l1",
        "FAILED",
        now=2100.0,
        outputs_ref="results/job_1/outputs.json",
        error={"code": "lease_expired", "message": "gone"},
        run_ms=1234,
        expired_before=2060.0,
    )
    assert done and done.status == "FAILED" and done.finished_at == 2100.0
    assert done.outputs_ref == "results/job_1/outputs.json" and done.outputs is None
    assert done.error == {"code": "lease_expired", "message": "gone"} and done.run_ms == 1234
    assert done.lease_key is None and done.lease_token == "l1" and done.runner_id == "r"
    assert jobs.get_job("job_1") == done
    assert jobs.finish_running("job_1", "l1", "SUCCEEDED", now=2200.0) is None
    got = jobs.get_job("job_1")
    assert got and got.status == "FAILED" and got.commits == 1


def test_finish_running_leaves_absent_fields_unset(jobs: JobRecordStore) -> None:
    jobs.create_job(record())
    claim(jobs)
    out = '[{"name":"y","datatype":"FP32","shape":[1],"data":[1.5]}]'
    done = jobs.finish_running("job_1", "l1", "SUCCEEDED", now=2001.0, outputs_json=out)
    assert done and done.outputs == [{"name": "y", "datatype": "FP32", "shape": [1], "data": [1.5]}]
    assert done.error is None and done.run_ms is None and done.outputs_ref is None
    assert done.run_info is None


def test_finish_running_keeps_the_run_info(jobs: JobRecordStore) -> None:
    jobs.create_job(record())
    claim(jobs)
    info = {"cold_start": True, "load_ms": 1400, "runner_ms": 12}
    done = jobs.finish_running("job_1", "l1", "SUCCEEDED", now=2001.0, run_ms=3, run_info=info)
    assert done and done.run_info == info and done.run_ms == 3
    assert jobs.get_job("job_1") == done


def test_claim_jobs_and_finish_running_jobs_fence_each_job_alone(jobs: JobRecordStore) -> None:
    jobs.create_jobs([record(f"job_{i}") for i in range(5)])
    jobs.create_job(replace(record("job_done"), status="SUCCEEDED", queue_token=None))

    def c(job_id: str, queue_token: str = "q1", lease: str | None = None) -> JobClaim:  # noqa: S107
        key = ("lease#0", f"k-{job_id}")
        return JobClaim(job_id, queue_token, lease or f"l-{job_id}", "7", 2060.0, key)

    assert jobs.claim_jobs([], runner_id="r", now=2000.0) == []
    got = jobs.claim_jobs(
        [
            c("job_0"),
            c("job_1", queue_token="stale"),  # another queue token: lost, alone
            c("job_2"),
            c("job_nope"),
            c("job_done"),
            c("job_2", lease="l-again"),  # named twice: sees the first claim's write
            c("job_3"),
        ],
        runner_id="r",
        now=2000.0,
    )
    assert [g is not None for g in got] == [True, False, True, False, False, False, True]
    for g, job_id in ((got[0], "job_0"), (got[2], "job_2"), (got[6], "job_3")):
        assert g and g.id == job_id and g.status == "RUNNING" and g.attempts == 1
        assert (g.lease_token, g.runner_id, g.model_version) == (f"l-{job_id}", "r", "7")
        assert (g.started_at, g.lease_expires_at) == (2000.0, 2060.0)
        assert g.lease_key == ("lease#0", f"k-{job_id}") and g.queue_token is None
        assert g.queue_key is None and g.request == record().request
        assert jobs.get_job(job_id) == g
    untouched = jobs.get_job("job_1")
    assert untouched and untouched.status == "QUEUED" and untouched.queue_token == "q1"

    out = '[{"name":"y","data":[1]}]'
    assert jobs.finish_running_jobs([], now=3000.0) == []
    done = jobs.finish_running_jobs(
        [
            JobFinish("job_0", "l-job_0", "SUCCEEDED", outputs_json=out, run_ms=5),
            JobFinish("job_2", "stale", "SUCCEEDED"),  # stale token: refused, alone
            JobFinish("job_3", "l-job_3", "FAILED", error={"code": "x"}, run_info={"a": 1}),
            JobFinish("job_0", "l-job_0", "FAILED"),  # a second commit of one lease: refused
            JobFinish("job_1", "l-job_1", "SUCCEEDED"),  # never claimed
            JobFinish("job_nope", "l", "SUCCEEDED"),
        ],
        now=3000.0,
    )
    assert [d is not None for d in done] == [True, False, True, False, False, False]
    d0, d3 = done[0], done[2]
    assert d0 and d0.status == "SUCCEEDED" and d0.outputs == [{"name": "y", "data": [1]}]
    assert d0.run_ms == 5 and d0.error is None and d0.finished_at == 3000.0
    assert d0.lease_key is None and d0.lease_token == "l-job_0" and d0.commits == 1
    assert d3 and d3.status == "FAILED" and d3.error == {"code": "x"} and d3.outputs is None
    assert d3.run_info == {"a": 1} and d3.commits == 1
    assert jobs.get_job("job_0") == d0 and jobs.get_job("job_3") == d3
    still = jobs.get_job("job_2")
    assert still and still.status == "RUNNING" and still.commits == 0
    again = jobs.finish_running_jobs([JobFinish("job_2", "l-job_2", "SUCCEEDED")], now=3001.0)
    assert again[0] and again[0].status == "SUCCEEDED"


def test_batch_transitions_past_one_statement(jobs: JobRecordStore) -> None:
    n = 450  # more rows than one SQLite statement takes (BATCH_ROWS)
    jobs.create_jobs([record(f"job_{i:03d}") for i in range(n)])
    claims = [
        JobClaim(
            f"job_{i:03d}", "q1" if i % 7 else "stale", f"l{i}", "1", 2060.0, ("lease#0", f"k{i}")
        )
        for i in range(n)
    ]
    got = jobs.claim_jobs(claims, runner_id="r", now=2000.0)
    assert [g is not None for g in got] == [bool(i % 7) for i in range(n)]
    assert all(g is None or g.id == f"job_{i:03d}" for i, g in enumerate(got))
    finishes = [
        JobFinish(f"job_{i:03d}", f"l{i}" if i % 5 else "bad", "SUCCEEDED") for i in range(n)
    ]
    done = jobs.finish_running_jobs(finishes, now=3000.0)
    assert [d is not None for d in done] == [bool(i % 7 and i % 5) for i in range(n)]
    assert all(d is None or d.id == f"job_{i:03d}" for i, d in enumerate(done))
    statuses = jobs.job_statuses([f"job_{i:03d}" for i in range(n)])
    assert sum(1 for s in statuses.values() if s == "SUCCEEDED") == sum(d is not None for d in done)


def test_finish_queued_needs_the_queue_token(jobs: JobRecordStore) -> None:
    jobs.create_job(record())
    assert jobs.finish_queued("job_1", "nope", "CANCELLED", now=1.0) is None
    done = jobs.finish_queued("job_1", "q1", "CANCELLED", now=1.0, error={"code": "cancelled"})
    assert done and done.status == "CANCELLED" and done.error == {"code": "cancelled"}
    assert done.queue_token is None and done.queue_key is None and done.finished_at == 1.0
    assert jobs.finish_queued("job_1", "q1", "TIMED_OUT", now=2.0) is None
    assert claim(jobs) is None
    jobs.create_job(record("job_2"))
    claim(jobs, job_id="job_2")
    assert jobs.finish_queued("job_2", "q1", "CANCELLED", now=3.0) is None  # running now
    plain = jobs.finish_queued("job_nope", "q1", "CANCELLED", now=3.0)
    assert plain is None


def test_job_statuses(jobs: JobRecordStore) -> None:
    jobs.create_jobs([record(f"job_{i:03d}") for i in range(120)])
    claim(jobs, job_id="job_007")
    ids = [f"job_{i:03d}" for i in range(0, 130, 1)] + ["job_007", "job_001"]
    got = jobs.job_statuses(ids)
    assert len(got) == 120 and got["job_007"] == "RUNNING" and got["job_119"] == "QUEUED"
    assert jobs.job_statuses([]) == {} and jobs.job_statuses(["job_x"]) == {}


def test_list_by_tenant_newest_first_with_cursor(jobs: JobRecordStore) -> None:
    for i in range(5):
        jobs.create_job(record(f"job_{i}", created=1000.0 + i))
    jobs.create_job(record("job_x", tenant="other", created=999.0))
    page, cursor = jobs.list_jobs("acme", None, None, 3, None)
    assert [j.id for j in page] == ["job_4", "job_3", "job_2"] and cursor
    assert page[0] == jobs.get_job("job_4")
    page, cursor = jobs.list_jobs("acme", None, None, 3, cursor)
    assert [j.id for j in page] == ["job_1", "job_0"]
    with pytest.raises(InvalidRequest):
        jobs.list_jobs("acme", None, None, 3, "not-a-cursor")
    _, acme_cursor = jobs.list_jobs("acme", None, None, 1, None)
    with pytest.raises(InvalidRequest):
        jobs.list_jobs("other", None, None, 3, acme_cursor)
    everyone, _ = jobs.list_jobs(None, None, None, 100, None)
    assert [j.id for j in everyone] == ["job_4", "job_3", "job_2", "job_1", "job_0", "job_x"]
    assert jobs.list_jobs("nobody", None, None, 10, None) == ([], None)


def list_all(
    jobs: JobRecordStore, tenant: str | None, status: str | None, model: str | None, limit: int
) -> list[str]:
    """Every id of a listing, page by page (pages may come back short, as the service knows)."""
    ids: list[str] = []
    cursor: str | None = None
    for _ in range(100):
        page, cursor = jobs.list_jobs(tenant, status, model, limit, cursor)
        assert len(page) <= limit
        ids.extend(j.id for j in page)
        if cursor is None:
            return ids
    raise AssertionError("the cursor never ran out")


def test_list_filters_by_status_and_model_across_pages(jobs: JobRecordStore) -> None:
    for i in range(12):
        jobs.create_job(record(f"job_{i:02d}", created=1000.0 + i, model="m" if i % 3 else "n"))
    for i in (1, 4, 9):
        claim(jobs, job_id=f"job_{i:02d}")
    jobs.create_job(record("job_o1", tenant="other", created=2000.0))
    jobs.create_job(record("job_o2", tenant="other", created=2001.0, model="n"))
    assert list_all(jobs, "acme", "RUNNING", None, 2) == ["job_09", "job_04", "job_01"]
    assert list_all(jobs, "acme", None, "n", 2) == ["job_09", "job_06", "job_03", "job_00"]
    assert list_all(jobs, "acme", "QUEUED", "n", 1) == ["job_06", "job_03", "job_00"]
    assert list_all(jobs, "acme", "SUCCEEDED", None, 5) == []
    assert list_all(jobs, "other", "", "", 1) == ["job_o2", "job_o1"]
    newest = [f"job_{i:02d}" for i in reversed(range(12))]
    assert list_all(jobs, "acme", None, None, 5) == newest
    # every tenant's (an admin's listing): newest first too, on every page
    assert list_all(jobs, None, None, None, 4) == ["job_o2", "job_o1", *newest]
    assert list_all(jobs, None, None, "n", 3) == ["job_o2", "job_09", "job_06", "job_03", "job_00"]
    assert list_all(jobs, None, "RUNNING", None, 2) == ["job_09", "job_04", "job_01"]


def test_every_tenants_jobs_page_newest_first(jobs: JobRecordStore) -> None:
    """An admin's ``limit 2`` is the two newest jobs of any tenant, and the pages go on from
    there without a repeat or a gap (on DynamoDB: merged from the sharded index)."""
    created = []
    for i in range(23):
        tenant = ("acme", "globex", "initech")[i % 3]
        job_id = f"job_{(i * 7919) % 1000:03d}_{i:02d}"  # ids not in time order
        jobs.create_job(record(job_id, tenant=tenant, created=1000.0 + i))
        created.append(job_id)
    newest = list(reversed(created))
    page, cursor = jobs.list_jobs(None, None, None, 2, None)
    assert [j.id for j in page] == newest[:2] and cursor
    for size in (1, 2, 5, 30):
        assert list_all(jobs, None, None, None, size) == newest
    with pytest.raises(InvalidRequest):
        jobs.list_jobs(None, None, None, 2, "bm90LWEtY3Vyc29y")
    _, tenant_cursor = jobs.list_jobs("acme", None, None, 1, None)
    with pytest.raises(InvalidRequest):
        jobs.list_jobs(None, None, None, 2, tenant_cursor)


def test_filtered_pages_are_full_while_the_listing_lasts(jobs: JobRecordStore) -> None:
    """The store refills a filtered page itself (DynamoDB: more requests after a page whose
    items the filter dropped): a short page comes only at the end of the listing."""
    for i in range(30):
        jobs.create_job(record(f"job_{i:02d}", created=1000.0 + i, model="m" if i % 6 else "n"))
    page, cursor = jobs.list_jobs("acme", None, "n", 3, None)
    assert [j.id for j in page] == ["job_24", "job_18", "job_12"] and cursor
    page, cursor = jobs.list_jobs("acme", None, "n", 3, cursor)
    assert [j.id for j in page[:2]] == ["job_06", "job_00"] and len(page) <= 2
    while cursor is not None:  # an empty last page is allowed, then the end
        page, cursor = jobs.list_jobs("acme", None, "n", 3, cursor)
        assert page == []
    assert len(jobs.list_jobs(None, None, "n", 4, None)[0]) == 4


def test_inline_outputs_up_to_the_stores_limit_are_stored(jobs: JobRecordStore) -> None:
    """``max_inline_outputs`` is what the job item holds next to its request: outputs of
    exactly that size are stored and read back (on DynamoDB: inside the 400 KB item)."""
    small, big = record("job_s"), record("job_b")
    big.request = {"inputs": [{"name": "x", "data": "y" * 100_000}]}
    room_small, room_big = jobs.max_inline_outputs(small), jobs.max_inline_outputs(big)
    assert room_big < room_small  # the request takes its share
    assert room_small >= 300_000  # at least what a DynamoDB item holds
    for job, room in ((small, room_small), (big, room_big)):
        jobs.create_job(job)
        claim(jobs, job_id=job.id)
        outputs = [{"name": "y", "data": ""}]
        text = json.dumps(outputs, separators=(",", ":"))
        outputs[0]["data"] = "z" * (room - len(text))
        text = json.dumps(outputs, separators=(",", ":"))
        assert len(text) == room
        done = jobs.finish_running(job.id, "l1", "SUCCEEDED", now=2001.0, outputs_json=text)
        assert done and done.outputs == outputs
        assert jobs.get_jobs([job.id])[job.id].outputs == outputs


def test_pings(jobs: JobRecordStore, queue: QueueStore) -> None:
    jobs.ping()
    queue.ping()


# ---------------------------------------------------------------------------------- queue
def entry(
    queue: QueueStore,
    job_id: str,
    token: str = "t",  # noqa: S107
    *,
    shard: int = 0,
    model: str = "m",
    priority: int = 0,
    created: float = 1000.0,
    version: str = "",
    region: str = "",
    ttl_deadline: float = 9e9,
    timeout_s: int = 60,
) -> QueueEntry:
    """A queue entry made by the store's own key format, from typed values only."""
    return queue.keys.entry(
        model=model,
        shard_number=shard,
        job_id=job_id,
        priority=priority,
        created_at=created,
        version=version,
        region=region,
        ttl_deadline=ttl_deadline,
        token=token,
        timeout_s=timeout_s,
    )


def test_queue_order_tokens_and_markers(queue: QueueStore) -> None:
    keys = queue.keys
    for job_id, priority, created in [("job_2", 0, 2.0), ("job_5", 100, 5.0), ("job_1", 0, 1.0)]:
        assert queue.enqueue(entry(queue, job_id, priority=priority, created=created))
    m0 = keys.queue_shard("m", 0)
    first = queue.head(m0, 10)
    assert [e.job_id for e in first] == ["job_5", "job_1", "job_2"]
    assert [e.job_id for e in queue.head(m0, 10, after_sk=first[0].sk)] == ["job_1", "job_2"]
    assert first[0].model == "m" and first[0].shard_number == 0 and first[0].priority == 100
    assert not queue.enqueue(replace(first[1], token="other"))  # the key holds another token
    queue.remove_entry(m0, first[1].sk, "other")  # not its token: kept
    assert len(queue.head(m0, 10)) == 3
    queue.remove_entry(m0, first[1].sk, "t")
    assert len(queue.head(m0, 10)) == 2
    queue.put_markers([keys.lease_marker(0, f"j{ms}", ms / 1000, "x") for ms in (5, 10, 20)])
    due = queue.due_markers(keys.lease_shard(0), keys.due_bound(0.015), 10)
    assert [m.job_id for m in due] == ["j5", "j10"]
    queue.delete_marker(due[0].shard, due[0].sk)
    assert [m.job_id for m in queue.due_markers(due[0].shard, keys.due_bound(0.015), 10)] == ["j10"]


def test_keys_are_the_stores_and_round_trip(queue: QueueStore) -> None:
    keys = queue.keys
    for model, n in [("m", 0), ("m", 7), ("a#b", 3), ("add_sub", 12)]:
        assert keys.shard_number(keys.queue_shard(model, n)) == n
    assert len({keys.queue_shard("m", n) for n in range(4)}) == 4
    assert keys.queue_shard("m", 1) != keys.queue_shard("mm", 1)
    assert len({keys.lease_shard(0), keys.lease_shard(1), keys.ttl_shard(0)}) == 3
    made = entry(queue, "job_x", priority=7, created=1234.5678, shard=3, model="a#b")
    assert (made.model, made.shard_number, made.priority) == ("a#b", 3, 7)
    assert made.created_at == 1234.567  # whole milliseconds
    assert made == entry(queue, "job_x", priority=7, created=1234.5678, shard=3, model="a#b")
    assert queue.enqueue(made)
    assert queue.head(made.shard, 10) == [made]  # read back with the same typed fields
    assert keys.shard_number(made.shard) == 3
    # A marker is due once its instant (ms) is before the bound's instant (ms).
    queue.put_marker(keys.ttl_marker(1, "job_t", 50.0004))
    assert queue.due_markers(keys.ttl_shard(1), keys.due_bound(50.0009), 10) == []
    assert [m.job_id for m in queue.due_markers(keys.ttl_shard(1), keys.due_bound(50.001), 10)] == [
        "job_t"
    ]
    assert queue.due_markers(keys.lease_shard(1), keys.due_bound(99.0), 10) == []


def test_sks_compare_in_claim_order_across_shards(queue: QueueStore) -> None:
    """What a replica's read-ahead relies on when it merges the heads of several shards."""
    specs = [(0, 10.0, "job_a", 0), (5, 30.0, "job_b", 1), (0, 5.0, "job_c", 2)]
    specs += [(100, 50.0, "job_d", 3), (5, 20.0, "job_e", 0), (0, 5.0, "job_f", 1)]
    for priority, created, job_id, shard in specs:
        queue.enqueue(entry(queue, job_id, priority=priority, created=created, shard=shard))
    merged = sorted(
        (e for n in range(4) for e in queue.head(queue.keys.queue_shard("m", n), 10)),
        key=lambda e: e.sk,
    )
    assert [e.job_id for e in merged] == ["job_d", "job_e", "job_b", "job_c", "job_f", "job_a"]
    assert [(e.priority, e.created_at) for e in merged][:2] == [(100, 50.0), (5, 20.0)]


def test_delete_markers_in_batches(queue: QueueStore) -> None:
    keys = queue.keys
    markers = [keys.lease_marker(i % 2, f"j{i}", i / 1000, "x") for i in range(60)]
    queue.put_markers(markers)
    gone = [(m.shard, m.sk) for m in markers[:40]]
    queue.delete_markers([*gone, gone[0], (keys.lease_shard(0), "absent")])  # repeats: fine
    queue.delete_markers([])
    bound = keys.due_bound(0.099)
    left = queue.due_markers(keys.lease_shard(0), bound, 100)
    left += queue.due_markers(keys.lease_shard(1), bound, 100)
    assert sorted(m.job_id for m in left) == sorted(m.job_id for m in markers[40:])


def test_atomic_unit_commits_together_where_the_backend_can(
    backend: str, jobs: JobRecordStore, queue: QueueStore
) -> None:
    keys = queue.keys
    m0, ttl0 = keys.queue_shard("m", 0), keys.ttl_shard(0)
    with jobs.atomic():  # SQLite: one transaction; DynamoDB: each call on its own
        queue.put_markers([keys.ttl_marker(0, "job_a1", 0.001)])
        queue.enqueue_many([entry(queue, "job_a1")])
        jobs.create_jobs([record("job_a1")])
        queue.add_depth("m", 0, 1)
        with jobs.atomic():  # nested: joins the outer unit
            assert jobs.create_job(record("job_a2"))
        assert jobs.get_job("job_a1") == record("job_a1")  # reads see the unit's own writes
    assert set(jobs.get_jobs(["job_a1", "job_a2"])) == {"job_a1", "job_a2"}
    assert [e.job_id for e in queue.head(m0, 10)] == ["job_a1"] and queue.depth("m") == 1

    with pytest.raises(RuntimeError), jobs.atomic():
        queue.put_markers([keys.ttl_marker(0, "job_b1", 0.002)])
        queue.enqueue_many([entry(queue, "job_b1")])
        jobs.create_jobs([record("job_b1")])
        queue.add_depth("m", 0, 1)
        raise RuntimeError("a failure midway")
    written = "job_b1" in jobs.get_jobs(["job_b1"])
    assert written == (backend == "dynamo")  # SQLite rolled the whole unit back
    assert len(queue.head(m0, 10)) == (2 if written else 1)
    assert queue.depth("m") == (2 if written else 1)
    due = queue.due_markers(ttl0, keys.due_bound(0.009), 10)
    assert [m.job_id for m in due] == (["job_a1", "job_b1"] if written else ["job_a1"])
    assert jobs.create_job(record("job_c1"))  # the store works as before after a rollback


def test_enqueue_same_key_same_token_rewrites(queue: QueueStore) -> None:
    first = entry(queue, "job_a", "t1", version="1", region="eu", ttl_deadline=100.0)
    assert queue.enqueue(first)
    retry = replace(first, version="2", region="", ttl_deadline=200.0, timeout_s=30)
    assert queue.enqueue(retry)  # a retry of the same enqueue wins again
    assert queue.head(first.shard, 10) == [retry]
    intruder = replace(first, token="t2", ttl_deadline=300.0, timeout_s=5)  # a requeue's entry
    assert not queue.enqueue(intruder)
    assert queue.head(first.shard, 10) == [retry]
    queue.remove_entry(first.shard, first.sk, "t1")
    assert queue.enqueue(intruder)  # the key is free again
    assert queue.head(first.shard, 10) == [intruder]


def test_head_is_priority_then_fifo_per_shard(queue: QueueStore) -> None:
    specs = [(0, 10.0, "job_a"), (5, 30.0, "job_b"), (0, 5.0, "job_c"), (100, 50.0, "job_d")]
    specs += [(5, 20.0, "job_e"), (0, 5.0, "job_f")]
    entries = [
        entry(
            queue, j, f"tok_{j}", shard=1, priority=p, created=c, version="v", region="r",
            ttl_deadline=c + 600,
        )
        for p, c, j in specs
    ]  # fmt: skip
    queue.enqueue_many(entries[:3])
    for e in entries[3:]:
        assert queue.enqueue(e)
    queue.enqueue(entry(queue, "job_0", shard=2))
    queue.enqueue(entry(queue, "job_0", shard=1, model="mm"))
    order = ["job_d", "job_e", "job_b", "job_c", "job_f", "job_a"]
    m1 = queue.keys.queue_shard("m", 1)
    got = queue.head(m1, 100)
    assert [e.job_id for e in got] == order
    assert got[0] == entries[3] and got[0].model == "m" and got[0].shard_number == 1
    assert [e.job_id for e in queue.head(m1, 2)] == order[:2]
    assert [e.job_id for e in queue.head(m1, 2, after_sk=got[1].sk)] == order[2:4]
    assert queue.head(m1, 10, after_sk=got[-1].sk) == []
    assert queue.head(queue.keys.queue_shard("m", 9), 10) == []
    queue.enqueue_many([])


def test_remove_entry_needs_its_token(queue: QueueStore) -> None:
    e = entry(queue, "job_1", "a")
    queue.enqueue(e)
    queue.remove_entry(e.shard, e.sk, "b")
    queue.remove_entry(queue.keys.queue_shard("m", 1), e.sk, "a")  # another shard
    queue.remove_entry(e.shard, entry(queue, "job_2").sk, "a")  # no such entry: nothing
    assert [x.token for x in queue.head(e.shard, 10)] == ["a"]
    queue.remove_entry(e.shard, e.sk, "a")
    assert queue.head(e.shard, 10) == []
    queue.remove_entry(e.shard, e.sk, "a")  # twice is fine


def test_due_markers_order_bound_limit_and_paging(queue: QueueStore) -> None:
    keys = queue.keys
    ttl0, lease0 = keys.ttl_shard(0), keys.lease_shard(0)
    instants = [30.0, 10.0, 20.0, 10.0, 40.0]
    markers = [keys.ttl_marker(0, f"job_{i}", t) for i, t in enumerate(instants)]
    queue.put_markers(markers[:3])
    queue.put_marker(markers[3])
    queue.put_marker(markers[4])
    queue.put_marker(keys.ttl_marker(1, "job_z", 0.0))
    queue.put_marker(keys.lease_marker(0, "job_y", 0.0, "lt"))
    due = queue.due_markers(ttl0, keys.due_bound(30.0), 10)
    assert [m.job_id for m in due] == ["job_1", "job_3", "job_2"]  # 30.0 exactly: not yet
    assert due[0] == markers[1]
    assert [m.job_id for m in queue.due_markers(ttl0, keys.due_bound(30.001), 10)] == [
        "job_1",
        "job_3",
        "job_2",
        "job_0",
    ]
    bound = keys.due_bound(100.0)
    first = queue.due_markers(ttl0, bound, 2)
    assert [m.job_id for m in first] == ["job_1", "job_3"]
    rest = queue.due_markers(ttl0, bound, 2, after_sk=first[-1].sk)
    assert [m.job_id for m in rest] == ["job_2", "job_0"]
    last = queue.due_markers(ttl0, bound, 2, after_sk=rest[-1].sk)
    assert [m.job_id for m in last] == ["job_4"]
    assert queue.due_markers(ttl0, bound, 2, after_sk=last[-1].sk) == []
    assert queue.due_markers(ttl0, keys.due_bound(5.0), 10) == []
    assert queue.due_markers(lease0, keys.due_bound(1.0), 10) == [
        keys.lease_marker(0, "job_y", 0.0, "lt")
    ]
    queue.put_marker(keys.lease_marker(0, "job_y", 0.0, "lt2"))  # a put replaces
    assert [m.token for m in queue.due_markers(lease0, keys.due_bound(1.0), 10)] == ["lt2"]
    y = keys.lease_marker(0, "job_y", 0.0, "")
    queue.delete_marker(y.shard, y.sk)
    queue.delete_marker(y.shard, y.sk)  # twice is fine
    assert queue.due_markers(lease0, keys.due_bound(1.0), 10) == []


def test_depth_counters(queue: QueueStore) -> None:
    for shard in (0, 1, 1, 3):
        queue.add_depth("m", shard, 1)
    queue.add_depth("m", 1, -1)
    queue.add_depth("n", 0, 2)
    queue.add_depth("n", 0, 0)
    assert queue.depth("m") == 3 and queue.depth("none") == 0
    assert queue.all_depths() == {"m": 3, "n": 2}
    queue.add_depth("n", 1, -2)
    queue.add_depth("k", 2, -1)  # a counter may go below zero for a moment: read as 0
    assert queue.depth("n") == 0 and queue.depth("k") == 0
    assert queue.all_depths() == {"k": 0, "m": 3, "n": 0}


# ---------------------------------------------------------------------------------- idempotency
def test_idempotency_key_binds_once(idempotency: IdempotencyStore) -> None:
    first = IdempotencyRecord("acme#k", "h1", "job_1", 1.0, 2, "q", expires_at=100.0)
    assert idempotency.claim_key(first, now=50.0) is None
    second = IdempotencyRecord("acme#k", "h2", "job_2", 2.0, 0, "q2", expires_at=200.0)
    assert idempotency.claim_key(second, now=60.0) == first
    assert idempotency.claim_key(second, now=100.0) == first  # expires_at == now: still live
    assert idempotency.claim_key(second, now=150.0) is None  # the first expired
    third = IdempotencyRecord("acme#k", "h3", "job_3", 3.0, 1, "q3", expires_at=300.0)
    assert idempotency.claim_key(third, now=160.0) == second
    other = IdempotencyRecord("globex#k", "h1", "job_4", 1.0, 2, "q", expires_at=100.0)
    assert idempotency.claim_key(other, now=160.0) is None  # keys are independent


def test_idempotency_find_key_reads_live_records_only(idempotency: IdempotencyStore) -> None:
    assert idempotency.find_key("acme#k", now=10.0) is None
    rec = IdempotencyRecord("acme#k", "h1", "job_1", 1.0, 2, "q", expires_at=100.0)
    assert idempotency.claim_key(rec, now=50.0) is None
    assert idempotency.find_key("acme#k", now=100.0) == rec  # expires_at == now: still live
    assert idempotency.find_key("acme#k", now=100.5) is None
    assert idempotency.find_key("globex#k", now=50.0) is None


# ---------------------------------------------------------------------------------- races
def test_claim_race_has_one_winner(jobs: JobRecordStore) -> None:
    jobs.create_job(record())
    won = race(
        16,
        lambda i: jobs.claim_job(
            "job_1",
            "q1",
            lease_token=f"l{i}",
            runner_id=f"r{i}",
            version="1",
            now=2000.0,
            lease_expires_at=2060.0,
            lease_key=("lease#0", f"k{i}"),
        ),
    )
    winners = [r for r in won if r is not None]
    assert len(winners) == 1
    got = jobs.get_job("job_1")
    assert got == winners[0] and got.attempts == 1
    finished = race(
        8, lambda i: jobs.finish_running("job_1", got.lease_token or "", "SUCCEEDED", now=float(i))
    )
    assert sum(r is not None for r in finished) == 1


def test_create_race_has_one_winner(jobs: JobRecordStore) -> None:
    created = race(8, lambda i: jobs.create_job(record(tenant=f"t{i}")))
    assert created.count(True) == 1
    got = jobs.get_job("job_1")
    assert got is not None and got.tenant == f"t{created.index(True)}"


def test_enqueue_and_idempotency_races_have_one_winner(
    queue: QueueStore, idempotency: IdempotencyStore
) -> None:
    assert sum(race(16, lambda i: queue.enqueue(entry(queue, "job_1", token=f"t{i}")))) == 1
    recs = [IdempotencyRecord("acme#k", "h", f"job_{i}", 1.0, 0, "q", 100.0) for i in range(16)]
    held = race(16, lambda i: idempotency.claim_key(recs[i], now=1.0))
    winners = [recs[i] for i, r in enumerate(held) if r is None]
    assert len(winners) == 1 and all(r in (None, winners[0]) for r in held)


def test_depth_counter_loses_no_update(queue: QueueStore) -> None:
    def add(i: int) -> None:
        for _ in range(5):
            queue.add_depth("m", i % 4, 1)

    race(16, add)
    assert queue.depth("m") == 80


@pytest.mark.parametrize("backend", ["sqlite"])
def test_sqlite_errors_become_unavailable(
    backend: str, jobs: JobRecordStore, sqlite_db: Any
) -> None:
    jobs.ping()
    sqlite_db.close()
    with pytest.raises(Unavailable):
        jobs.get_job("job_1")
    with pytest.raises(Unavailable):
        jobs.create_job(record())


# ---------------------------------------------------------------------------------- models, blobs
def test_model_store_ownership_and_ready(settings: Any, aws: Any) -> None:
    store = DynamoModelStore(aws[0], settings.table("models"))
    assert store.claim_name("m", "acme", 1.0) == "acme"
    assert store.claim_name("m", "globex", 2.0) == "acme"
    rec = ModelVersionRecord("m", "2", "acme", "UPLOADING", 1.0, files=[])
    assert store.put_version(rec) and not store.put_version(rec)
    store.put_version(ModelVersionRecord("m", "10", "acme", "UPLOADING", 1.0, files=[]))
    assert [v.version for v in store.list_versions("m")] == ["10", "2"]
    rec.inputs = [{"name": "x", "datatype": "FP32", "dims": [4]}]
    assert store.mark_ready(rec) and not store.mark_ready(rec)
    got = store.get_version("m", "2")
    assert got and got.state == "READY" and got.inputs == rec.inputs
    assert store.list_names() == [("m", "acme")]
    assert store.delete_version("m", "2") and not store.delete_version("m", "2")


def test_blob_store_presigned_put_get_and_hash(settings: Any, aws: Any) -> None:
    blobs = S3BlobStore(aws[1], settings.bucket)
    data = b"hello gpufleet"
    with httpx.Client() as http:
        assert http.put(blobs.presign_put("a/b.txt", 60), content=data).status_code == 200
        assert http.get(blobs.presign_get("a/b.txt", 60)).content == data
    assert blobs.head("a/b.txt") == len(data) and blobs.head("a/none") is None
    assert blobs.sha256_of("a/b.txt") == hashlib.sha256(data).hexdigest()
    assert blobs.sha256_of("a/none") is None
    blobs.put_json("r/x.json", {"k": [1, 2]})
    assert blobs.get_json("r/x.json") == {"k": [1, 2]}
    with pytest.raises(NotFound):
        blobs.get_json("r/none.json")
    blobs.delete_prefix("a/")
    assert blobs.head("a/b.txt") is None
    blobs.ping()


def test_region_policies_round_trip_in_entries_and_jobs(
    queue: QueueStore, jobs: JobRecordStore
) -> None:
    """Geo-aware leasing (docs/regions.md) keeps a job's region policy in the queue entry's
    ``region`` string and in the job's ``request``: both come back as written, on every
    backend, and a lease filter reading the head sees each entry's own policy."""
    from control_plane.services.regions import RegionPolicy, static_region_fits

    allowed = tuple(f"region-{i:02d}-{'x' * 40}" for i in range(20))  # a long limit
    policies = [
        RegionPolicy(),
        RegionPolicy("eu-west-1", ("eu-west-1",), 0.0),
        RegionPolicy("eu-west-1", ("eu-west-1", "eu-central-1"), 12.5),
        RegionPolicy(allowed[0], allowed, 30.0),
    ]
    written = [
        entry(queue, f"job_r{i}", created=1000.0 + i, region=p.encode())
        for i, p in enumerate(policies)
    ]
    queue.enqueue_many(written)
    head = queue.head(written[0].shard, 10)
    assert head == written
    assert [RegionPolicy.decode(e.region) for e in head] == policies
    fits = [e.job_id for e in head if static_region_fits(e.region, "eu-central-1", 5.0)]
    assert fits == ["job_r0"]  # any region; the others wait, are pinned, or exclude it
    placement = {"regions_allowed": list(allowed), "spill_after_s": 7.5}
    rec = replace(
        record("job_rp"),
        region=allowed[0],
        request={**record().request, "placement": placement},
    )
    assert jobs.create_job(rec)
    got = jobs.get_job("job_rp")
    assert got is not None and got.region == allowed[0]
    assert RegionPolicy.of_job(got.region, got.request, 30.0) == RegionPolicy(
        allowed[0], allowed, 7.5
    )
