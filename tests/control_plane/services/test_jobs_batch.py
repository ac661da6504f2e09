"""Durable jobs in batches on the embedded SQLite store: a batch complete fences each result
by its own lease token, a batch submit / lease / complete is one transaction each (and a
failed batch submit leaves nothing); the runner sends its results through one completion
queue in batch completes, with single completes for a control plane without the route."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from gpufleet.wire import CommitRequest, CompleteItem, CreateVersionRequest, Tensor

from control_plane.composition import build_job_service
from control_plane.errors import Unavailable
from control_plane.services.jobs import JobService
from control_plane.services.models import object_key
from control_plane.settings import Settings
from control_plane.storage.local_blobs import LocalBlobStore
from control_plane.storage.protocols import JobServiceStores, QueueStore
from control_plane.storage.sqlite import schema
from control_plane.storage.sqlite.db import Database
from control_plane.storage.sqlite.idempotency import SqliteIdempotencyStore
from control_plane.storage.sqlite.jobs import SqliteJobRecordStore
from control_plane.storage.sqlite.models import SqliteModelStore
from control_plane.storage.sqlite.queue import SqliteQueueStore
from runner.jobloop import CompletionQueue
from tests.contract.fleet import add_sub_files, file_specs, job, lease, principal
from tests.runner.runner_fakes import FakeControlPlane
from tests.runner.runner_fakes import job as leased_job
from tests.runner.test_runner_jobloop import Rig

USER = principal("acme")
OUTPUTS = [Tensor(name="OUTPUT0", datatype="FP32", shape=[1, 4], data=[0, 2, 4, 6])]


class CountingDatabase(Database):
    """The embedded store's database, counting its write transactions."""

    transactions = 0

    @contextlib.contextmanager
    def write(self) -> Iterator[Any]:
        if not getattr(self._local, "atomic", False):  # a write inside atomic() joins it
            self.transactions += 1
        with super().write() as conn:
            yield conn


class DepthFails:
    """The SQLite queue store whose depth update (the last write of a batch submit) fails."""

    def __init__(self, inner: QueueStore) -> None:
        self._inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def add_depth(self, model: str, shard: int, delta: int) -> None:
        raise Unavailable("storage error during count queue depth: disk I/O error (injected)")


@pytest.fixture
def db(tmp_path: Path) -> Iterator[CountingDatabase]:
    database = CountingDatabase(tmp_path / "gpufleet.db")
    schema.migrate(database)
    yield database
    database.close()


def service(db: Database, tmp_path: Path, queue: Any = None) -> JobService:
    """The job service on ``db`` with add_sub READY (files written to the blob directory)."""
    settings = Settings(embedded=True, data_dir=tmp_path, poll_interval_s=0.05)
    blobs = LocalBlobStore(tmp_path / "blobs", "http://127.0.0.1", b"k" * 32)
    store = JobServiceStores(
        SqliteJobRecordStore(db), queue or SqliteQueueStore(db), SqliteIdempotencyStore(db)
    )
    jobs, models = build_job_service(
        settings,
        SimpleNamespace(
            kind="",
            jobs=store,
            models=SqliteModelStore(db),
            blobs=blobs,
            limits=None,
            deployments=None,
        ),
    )
    files = add_sub_files()
    created = models.create_version(USER, "add_sub", CreateVersionRequest(files=file_specs(files)))
    for path, data in files.items():
        blobs.put_bytes(object_key("add_sub", created.version, path), data)
    models.commit(USER, "add_sub", created.version, CommitRequest())
    return jobs


def item(leased: Any, **kw: Any) -> CompleteItem:
    body = {"job_id": leased.id, "lease_token": leased.lease_token, "status": "SUCCEEDED"}
    return CompleteItem(**{**body, "outputs": OUTPUTS, **kw})


def test_batch_complete_fences_each_result_by_its_own_token(
    db: CountingDatabase, tmp_path: Path
) -> None:
    jobs = service(db, tmp_path)
    seen: list[tuple[str, str, str | None]] = []
    jobs.transitions.on_view(lambda v, prev: seen.append((v.id, v.status, prev)))
    ids = jobs.submit_batch(USER, [job() for _ in range(5)])
    leased = sorted(lease(jobs, max_jobs=5), key=lambda x: ids.index(x.id))
    assert [x.id for x in leased] == ids
    stale = item(leased[2], lease_token="not-the-token")
    failed = item(leased[3], status="FAILED", outputs=None)
    items = [item(leased[0]), item(leased[1]), stale, failed, item(leased[4])]
    items.append(item(leased[1]))  # the same result twice: a retry of the first
    items.append(CompleteItem(job_id="job_nope", lease_token="x", status="SUCCEEDED"))
    items.append(item(leased[4], status="FAILED", outputs=None))  # a different result

    before = db.transactions
    results = jobs.complete_batch("run_1", items)
    assert db.transactions - before == 1  # every commit of the batch: one transaction
    assert [(r.job_id, r.status) for r in results] == [
        (ids[0], "committed"),
        (ids[1], "committed"),
        (ids[2], "conflict"),
        (ids[3], "committed"),
        (ids[4], "committed"),
        (ids[1], "committed"),
        ("job_nope", "not_found"),
        (ids[4], "conflict"),  # not the result committed
    ]
    assert results[2].error is not None and results[2].error.code == "conflict"
    assert results[6].error is not None and results[6].error.code == "not_found"
    statuses = [jobs.get(USER, i).status for i in ids]
    assert statuses == ["SUCCEEDED", "SUCCEEDED", "RUNNING", "FAILED", "SUCCEEDED"]
    assert jobs.get(USER, ids[0]).outputs == OUTPUTS
    assert jobs.get(USER, ids[3]).error is not None
    finished = [(i, s) for i, s, prev in seen if prev == "RUNNING"]
    assert finished == [
        (ids[0], "SUCCEEDED"),
        (ids[1], "SUCCEEDED"),
        (ids[3], "FAILED"),
        (ids[4], "SUCCEEDED"),
    ]

    # The runner lost the answer and sends the batch again: the same answers, nothing twice.
    again = jobs.complete_batch("run_1", items[:5])
    assert [r.status for r in again] == ["committed"] * 2 + ["conflict"] + ["committed"] * 2
    assert len([1 for _, _, prev in seen if prev == "RUNNING"]) == 4
    # Another runner's results are refused, and a result not of this lease is invalid.
    assert [r.status for r in jobs.complete_batch("run_2", [item(leased[2])])] == ["conflict"]
    wrong_ref = item(leased[2], outputs=None, outputs_ref="results/elsewhere")
    [invalid] = jobs.complete_batch("run_1", [wrong_ref])
    assert invalid.status == "invalid" and invalid.error is not None
    assert invalid.error.code == "invalid_request"
    assert jobs.get(USER, ids[2]).status == "RUNNING"


def test_submit_lease_complete_batches_are_one_transaction_each(
    db: CountingDatabase, tmp_path: Path
) -> None:
    jobs = service(db, tmp_path)
    before = db.transactions
    ids = jobs.submit_batch(USER, [job() for _ in range(100)])
    assert db.transactions - before == 1
    before = db.transactions
    leased = lease(jobs, max_jobs=100)
    assert len(leased) == 100 and db.transactions - before == 1
    before = db.transactions
    results = jobs.complete_batch("run_1", [item(x) for x in leased])
    assert {r.status for r in results} == {"committed"} and db.transactions - before == 1
    assert jobs.queue_depths() == {"add_sub": 0}

    async def waits() -> list[str]:
        views = await asyncio.gather(*(jobs.wait(USER, i, 1.0) for i in ids))
        return [v.status for v in views]

    assert asyncio.run(waits()) == ["SUCCEEDED"] * 100


def test_a_failed_batch_submit_leaves_nothing(db: CountingDatabase, tmp_path: Path) -> None:
    queue = SqliteQueueStore(db)
    jobs = service(db, tmp_path, queue=DepthFails(queue))
    seen: list[str] = []
    jobs.transitions.on_view(lambda v, prev: seen.append(v.id))
    with pytest.raises(Unavailable):
        jobs.submit_batch(USER, [job() for _ in range(30)])
    assert jobs.list_jobs(principal("root", "admin"), None, None, 100, None).jobs == []
    assert all(queue.head(f"add_sub#{n}", 100) == [] for n in range(4))
    assert all(queue.due_markers(f"ttl#{n}", "9" * 13, 100) == [] for n in range(4))
    assert queue.all_depths() == {} and seen == []


# ------------------------------------------------------------------------ runner side
async def test_runner_sends_results_in_batch_completes(tmp_path: Path) -> None:
    cp = FakeControlPlane([leased_job(f"job_{i}") for i in range(40)])
    rig = Rig(tmp_path, cp, max_concurrency=40)
    rig.engine.delay = 0.2
    await rig.run_until(lambda: len(cp.completed) == 40)
    sent = [job_id for batch in cp.batches for job_id in batch]
    assert sorted(sent) == sorted(f"job_{i}" for i in range(40))  # each once
    assert len(cp.batches) < 40 and max(len(b) for b in cp.batches) > 1
    assert rig.state.counters.succeeded == 40
    assert all(lease["max_jobs"] <= 40 for lease in cp.leases)


async def test_runner_uses_single_completes_where_the_route_is_missing(tmp_path: Path) -> None:
    cp = FakeControlPlane([leased_job(f"job_{i}") for i in range(6)] + [leased_job("job_taken")])
    cp.batch_route = False  # an older control plane: 404
    cp.conflict_on_complete.add("job_taken")
    rig = Rig(tmp_path, cp, max_concurrency=4)
    await rig.run_until(lambda: len(cp.completed) == 6 and rig.state.counters.conflicts == 1)
    assert cp.batches == [] and rig.loop.completions.calls == 1  # asked once, then singles
    assert "job_taken" not in cp.completed and not rig.state.inflight


class FlakyBatches(FakeControlPlane):
    """Answers the first ``failures`` batch completes with 503 (nothing committed)."""

    def __init__(self, jobs: list[dict[str, Any]], failures: int) -> None:
        super().__init__(jobs)
        self.failures = failures

    def _complete_batch(self, body: dict[str, Any]) -> httpx.Response:
        if self.failures > 0:
            self.failures -= 1
            err = {"code": "unavailable", "message": "try again"}
            return httpx.Response(503, json={"api_version": "v1", "error": err})
        return super()._complete_batch(body)


async def test_a_failed_batch_complete_is_retried_per_result(tmp_path: Path) -> None:
    cp = FlakyBatches([leased_job("job_a"), leased_job("job_b")], failures=1)
    rig = Rig(tmp_path, cp, max_concurrency=2)
    await rig.run_until(lambda: len(cp.completed) == 2)
    assert cp.failures == 0 and rig.state.counters.succeeded == 2
    assert sorted(job_id for batch in cp.batches for job_id in batch) == ["job_a", "job_b"]


class NoLargeBatches(FakeControlPlane):
    """Refuses (413) a batch complete of more than one result, as a small body limit would."""

    def _complete_batch(self, body: dict[str, Any]) -> httpx.Response:
        if len(body["results"]) > 1:
            err = {"code": "payload_too_large", "message": "body too large"}
            return httpx.Response(413, json={"api_version": "v1", "error": err})
        return super()._complete_batch(body)


async def test_batches_stay_under_a_body_size_and_go_one_by_one_when_refused(
    tmp_path: Path,
) -> None:
    cp = FakeControlPlane([leased_job(f"job_{i}") for i in range(12)])
    rig = Rig(tmp_path, cp, max_concurrency=12)
    rig.loop.completions = CompletionQueue(rig.client, max_bytes=450)  # 2 results of ~190 B
    await rig.run_until(lambda: len(cp.completed) == 12)
    assert max(len(b) for b in cp.batches) <= 2 and sum(len(b) for b in cp.batches) == 12

    cp = NoLargeBatches([leased_job(f"job_{i}") for i in range(6)])
    rig = Rig(tmp_path, cp, max_concurrency=6)
    await rig.run_until(lambda: len(cp.completed) == 6)
    assert rig.state.counters.succeeded == 6 and rig.state.counters.abandoned == 0
