"""Contract of the job, queue, idempotency and model stores and the blob store against moto
over HTTP: assert on state, and on who wins each conditional write."""

from __future__ import annotations

import hashlib
from typing import Any

import httpx
import pytest

from control_plane.errors import InvalidRequest, NotFound
from control_plane.storage.blobs import S3BlobStore
from control_plane.storage.dynamo_idempotency import DynamoIdempotencyStore
from control_plane.storage.dynamo_jobs import DynamoJobStore
from control_plane.storage.dynamo_models import DynamoModelStore
from control_plane.storage.dynamo_queue import DynamoQueueStore
from control_plane.storage.protocols import (
    IdempotencyRecord,
    JobRecord,
    Marker,
    ModelVersionRecord,
    QueueEntry,
)


@pytest.fixture
def jobs(settings: Any, aws: Any) -> DynamoJobStore:
    return DynamoJobStore(aws[0], settings.table("jobs"))


@pytest.fixture
def queue(settings: Any, aws: Any) -> DynamoQueueStore:
    t = settings.table
    return DynamoQueueStore(aws[0], t("queue"), t("leases"), t("models"))


def record(job_id: str = "job_1", tenant: str = "acme", created: float = 1000.0) -> JobRecord:
    return JobRecord(
        id=job_id,
        tenant=tenant,
        model="m",
        model_version=None,
        pinned=False,
        status="QUEUED",
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


def claim(jobs: DynamoJobStore, token: str = "l1", queue_token: str = "q1") -> Any:  # noqa: S107
    return jobs.claim_job(
        "job_1",
        queue_token,
        lease_token=token,
        runner_id="r",
        version="1",
        now=2000.0,
        lease_expires_at=2060.0,
        lease_key=("lease#0", "k"),
    )


def test_create_is_once_and_roundtrips(jobs: DynamoJobStore) -> None:
    assert jobs.create_job(record())
    assert not jobs.create_job(record())
    got = jobs.get_job("job_1")
    assert got == record()
    assert jobs.get_job("job_nope") is None


def test_claim_is_won_once_and_fenced(jobs: DynamoJobStore) -> None:
    jobs.create_job(record())
    assert claim(jobs, queue_token="other") is None
    won = claim(jobs)
    assert won and won.status == "RUNNING" and won.attempts == 1 and won.queue_token is None
    assert claim(jobs, token="l2") is None
    assert jobs.extend_lease("job_1", "bad", "r", 3000.0, ("lease#0", "k2")) is None
    assert jobs.extend_lease("job_1", "l1", "other-runner", 3000.0, ("lease#0", "k2")) is None
    moved = jobs.extend_lease("job_1", "l1", "r", 3000.0, ("lease#0", "k2"))
    assert moved and moved.lease_key == ("lease#0", "k2")
    assert not jobs.requeue_running("job_1", "l1", ("m#1", "s"), "q2", expired_before=2999.0)
    assert jobs.requeue_running("job_1", "l1", ("m#1", "s"), "q2", expired_before=3000.0)
    again = claim(jobs, token="l3", queue_token="q2")
    assert again and again.attempts == 2
    assert jobs.finish_running("job_1", "l1", "SUCCEEDED", now=1.0) is None  # stale token
    done = jobs.finish_running("job_1", "l3", "SUCCEEDED", now=4000.0, outputs_json="[]")
    assert done and done.status == "SUCCEEDED" and done.outputs == []
    assert jobs.finish_running("job_1", "l3", "FAILED", now=4001.0) is None
    assert jobs.job_statuses(["job_1", "job_2"]) == {"job_1": "SUCCEEDED"}


def test_finish_queued_needs_the_queue_token(jobs: DynamoJobStore) -> None:
    jobs.create_job(record())
    assert jobs.finish_queued("job_1", "nope", "CANCELLED", now=1.0) is None
    done = jobs.finish_queued("job_1", "q1", "CANCELLED", now=1.0, error={"code": "cancelled"})
    assert done and done.status == "CANCELLED" and done.error == {"code": "cancelled"}


def test_list_by_tenant_newest_first_with_cursor(jobs: DynamoJobStore) -> None:
    for i in range(5):
        jobs.create_job(record(f"job_{i}", created=1000.0 + i))
    jobs.create_job(record("job_x", tenant="other"))
    page, cursor = jobs.list_jobs("acme", None, None, 3, None)
    assert [j.id for j in page] == ["job_4", "job_3", "job_2"] and cursor
    page, cursor = jobs.list_jobs("acme", None, None, 3, cursor)
    assert [j.id for j in page] == ["job_1", "job_0"]
    with pytest.raises(InvalidRequest):
        jobs.list_jobs("acme", None, None, 3, "not-a-cursor")
    everyone, _ = jobs.list_jobs(None, None, None, 100, None)
    assert len(everyone) == 6


def test_queue_order_tokens_and_markers(queue: DynamoQueueStore) -> None:
    def entry(sk: str, token: str = "t") -> QueueEntry:  # noqa: S107
        return QueueEntry("m#0", sk, f"job_{sk}", "", "", 9e12, token, 60)

    for sk in ["999#2", "899#5", "999#1"]:
        assert queue.enqueue(entry(sk))
    assert [e.sk for e in queue.head("m#0", 10)] == ["899#5", "999#1", "999#2"]
    assert [e.sk for e in queue.head("m#0", 10, after_sk="899#5")] == ["999#1", "999#2"]
    assert queue.head("m#0", 1)[0].model == "m" and queue.head("m#0", 1)[0].shard_number == 0
    assert not queue.enqueue(entry("999#1", token="other"))  # the key holds another token
    queue.remove_entry("m#0", "999#1", "other")  # not its token: kept
    assert len(queue.head("m#0", 10)) == 3
    queue.remove_entry("m#0", "999#1", "t")
    assert len(queue.head("m#0", 10)) == 2
    queue.put_markers([Marker("lease#0", f"{ms:013d}#j{ms}", f"j{ms}", "x") for ms in (5, 10, 20)])
    assert [m.job_id for m in queue.due_markers("lease#0", f"{15:013d}", 10)] == ["j5", "j10"]
    queue.delete_marker("lease#0", f"{5:013d}#j5")
    assert [m.job_id for m in queue.due_markers("lease#0", f"{15:013d}", 10)] == ["j10"]


def test_depth_counters(queue: DynamoQueueStore) -> None:
    for shard in (0, 1, 1, 3):
        queue.add_depth("m", shard, 1)
    queue.add_depth("m", 1, -1)
    queue.add_depth("n", 0, 2)
    assert queue.depth("m") == 3 and queue.depth("none") == 0
    assert queue.all_depths() == {"m": 3, "n": 2}


def test_idempotency_key_binds_once(settings: Any, aws: Any) -> None:
    store = DynamoIdempotencyStore(aws[0], settings.table("idempotency"))
    first = IdempotencyRecord("acme#k", "h1", "job_1", 1.0, 2, "q", expires_at=100.0)
    assert store.claim_key(first, now=50.0) is None
    second = IdempotencyRecord("acme#k", "h2", "job_2", 2.0, 0, "q2", expires_at=200.0)
    assert store.claim_key(second, now=60.0) == first
    assert store.claim_key(second, now=150.0) is None  # the first expired


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
