"""Queue benchmark: submit / lease / complete latency and throughput against a moto server,
with few and with many jobs stored.

Cases (stored jobs are loaded with direct ``batch_write_item`` to keep the setup fast):
  small   100 finished +     10 queued
  medium  10k finished +    1k queued
  large   100k finished + 10k queued           (--quick: 100/10, 2k/200, 10k/1k)

Each case then times N sequential submits, N leases (max_jobs=1) and N completes through
``JobService`` over HTTP to the moto server, and the table shows ops/s, p50 and p99. The last
line is the lease p50 ratio large/small (the design's target: at most 2x).

    .venv/bin/python bench/bench_queue.py --quick

``--calls`` counts storage calls per job instead (submit -> lease -> complete -> terminal
read), one job at a time ("single") and in batches of 100 ("batch": ``POST /v1/jobs/batch``,
``lease(max_jobs=100)``, ``POST /v1/runners/{id}/complete``, concurrent waits), and one at a
time as the SDK sends it ("client": Idempotency-Key, a long poll waiting while the runner's
long-poll lease and complete run), on DynamoDB
(API calls seen by botocore's ``before-call`` event, moto over HTTP) and on the embedded
SQLite store (statements seen by a trace callback on every connection; ``BEGIN`` = one write
transaction):

    .venv/bin/python bench/bench_queue.py --calls
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import socket
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "sdk")]
os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")

from gpufleet import wire  # noqa: E402
from gpufleet.wire import (  # noqa: E402
    CommitRequest,
    CompleteRequest,
    CreateVersionRequest,
    LeaseRequest,
    ModelRef,
    Tensor,
)

from control_plane.composition import Services, build_job_service, build_services  # noqa: E402
from control_plane.services.jobs import JobService  # noqa: E402
from control_plane.services.models import ModelService, object_key  # noqa: E402
from control_plane.services.queue_ops import stable_shard  # noqa: E402
from control_plane.settings import Settings  # noqa: E402
from control_plane.storage import queue_keys as keys  # noqa: E402
from control_plane.storage.aws import make_clients  # noqa: E402
from control_plane.storage.definitions import create_all  # noqa: E402
from control_plane.storage.dynamo_jobs import to_item  # noqa: E402
from control_plane.storage.protocols import JobRecord  # noqa: E402
from control_plane.storage.stores import Stores, dynamo_stores  # noqa: E402
from tests.contract.fleet import add_sub_files, file_specs, job, principal, push_model  # noqa: E402

USER = principal("bench")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def batch_put(db: Any, table: str, items: list[dict[str, Any]]) -> None:
    for i in range(0, len(items), 25):
        request: dict[str, Any] = {table: [{"PutRequest": {"Item": x}} for x in items[i : i + 25]]}
        while request:
            request = db.batch_write_item(RequestItems=request).get("UnprocessedItems") or {}


def preload(settings: Settings, db: Any, finished: int, queued: int) -> None:
    """Stored jobs: ``finished`` SUCCEEDED ones and ``queued`` claimable ones (+ indexes)."""
    t0 = time.time() - 3600
    request = {"inputs": job().model_dump(mode="json")["inputs"], "tags": {}}

    def record(i: int, status: str) -> JobRecord:
        return JobRecord(
            id=f"job_pre{i:07d}{uuid.uuid4().hex[:8]}",
            tenant=USER.tenant,
            model="add_sub",
            model_version="1",
            pinned=False,
            status=status,
            priority=random.randrange(3),
            created_at=t0 + i / 1000,
            timeout_s=600,
            ttl_s=86_400,
            max_attempts=3,
            region=None,
            request=request,
            attempts=1 if status != "QUEUED" else 0,
        )

    items = []
    for i in range(finished):
        rec = record(i, "SUCCEEDED")
        items.append(to_item(rec))
        if len(items) >= 2500:
            batch_put(db, settings.table("jobs"), items)
            items = []
    batch_put(db, settings.table("jobs"), items)
    jobs, entries, markers = [], [], []
    depth: dict[int, int] = {}
    for i in range(queued):
        rec = record(finished + i, "QUEUED")
        shard = random.randrange(settings.queue_shards)
        token = uuid.uuid4().hex[:12]
        sk = keys.queue_sk(rec.priority, rec.created_at, rec.id)
        rec.queue_key, rec.queue_token = (keys.queue_shard("add_sub", shard), sk), token
        jobs.append(to_item(rec))
        entries.append(
            {
                "shard": {"S": keys.queue_shard("add_sub", shard)},
                "sk": {"S": sk},
                "job_id": {"S": rec.id},
                "version": {"S": ""},
                "region": {"S": ""},
                "ttl_deadline": {"N": str(int(rec.ttl_deadline))},
                "token": {"S": token},
                "timeout_s": {"N": "600"},
            }
        )
        ttl = keys.QUEUE_KEYS.ttl_marker(
            stable_shard(rec.id, settings.lease_shards), rec.id, rec.ttl_deadline
        )
        m_shard, m_sk = ttl.shard, ttl.sk
        markers.append(
            {
                "shard": {"S": m_shard},
                "sk": {"S": m_sk},
                "job_id": {"S": rec.id},
                "token": {"S": ""},
            }
        )
        depth[shard] = depth.get(shard, 0) + 1
    batch_put(db, settings.table("leases"), markers)
    batch_put(db, settings.table("queue"), entries)
    batch_put(db, settings.table("jobs"), jobs)
    batch_put(
        db,
        settings.table("models"),
        [
            {"name": {"S": "add_sub"}, "sk": {"S": f"depth#{n}"}, "depth": {"N": str(c)}}
            for n, c in depth.items()
        ],
    )


def timed(fn: Callable[[], Any], n: int) -> tuple[list[float], list[Any]]:
    lat, out = [], []
    for _ in range(n):
        t = time.perf_counter()
        out.append(fn())
        lat.append(time.perf_counter() - t)
    return lat, out


def stats(lat: list[float]) -> tuple[float, float, float]:
    lat = sorted(lat)
    p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))]
    return len(lat) / sum(lat), statistics.median(lat) * 1000, p99 * 1000


def run_case(endpoint: str, finished: int, queued: int, n: int) -> dict[str, tuple[float, ...]]:
    tag = uuid.uuid4().hex[:8]
    settings = Settings(
        dynamodb_endpoint_url=endpoint,
        s3_endpoint_url=endpoint,
        table_prefix=f"bq{tag}",
        bucket=f"bq{tag}",
        max_queue_depth=10**9,
        tenant_max_queued=0,  # no tenant quota: the queue is the subject
    )
    db, s3 = make_clients(settings)
    create_all(db, s3, settings.table_prefix, settings.bucket, settings.aws_region)
    jobs, models = build_job_service(settings, dynamo_stores(settings))
    push_model(models, USER)
    t = time.perf_counter()
    preload(settings, db, finished, queued)
    load_s = time.perf_counter() - t
    loop = asyncio.new_event_loop()
    req = LeaseRequest(models=[ModelRef(name="add_sub", version="1")], max_jobs=1)
    out: dict[str, tuple[float, ...]] = {}
    sub_lat, _ = timed(lambda: jobs.submit(USER, job()), n)
    lease_lat, leased = timed(
        lambda: loop.run_until_complete(jobs.lease("run_bench", None, req)).jobs[0], n
    )
    it = iter(leased)
    done_lat, _ = timed(lambda: complete(jobs, next(it)), n)
    loop.close()
    out["submit"], out["lease"], out["complete"] = stats(sub_lat), stats(lease_lat), stats(done_lat)
    out["_load_s"] = (load_s,)
    return out


def complete(jobs: JobService, leased: Any) -> Any:
    return jobs.complete(
        "run_bench", leased.id, CompleteRequest(lease_token=leased.lease_token, status="SUCCEEDED")
    )


# ------------------------------------------------------------------------------ call counts
OUTPUTS = [Tensor(name="OUTPUT0", datatype="FP32", shape=[1, 4], data=[0, 2, 4, 6])]
PHASES = ("submit", "lease", "complete", "read")


class CallCounter:
    """Storage calls by phase and operation (thread-safe: leases read in a pool)."""

    def __init__(self) -> None:
        self.phase = "setup"
        self.calls: dict[str, Counter[str]] = defaultdict(Counter)
        self._lock = threading.Lock()

    def hit(self, op: str) -> None:
        with self._lock:
            self.calls[self.phase][op] += 1


def push_model_to(models: ModelService, stores: Stores, name: str = "add_sub") -> None:
    """add_sub READY on either store: a bucket gets presigned PUTs, the embedded store's blob
    directory is written directly (its URLs are served by an app that is not running here)."""
    files = add_sub_files(name)
    if stores.kind != "sqlite":
        push_model(models, USER, name, files)
        return
    created = models.create_version(USER, name, CreateVersionRequest(files=file_specs(files)))
    for path, data in files.items():
        stores.blobs.put_bytes(object_key(name, created.version, path), data)  # type: ignore[attr-defined]
    models.commit(USER, name, created.version, CommitRequest())


@contextmanager
def sqlite_services(counter: CallCounter | None = None, **overrides: Any) -> Iterator[Services]:
    """Every service on a fresh embedded store in a temporary directory (statements counted
    into ``counter``), add_sub READY."""
    from control_plane.storage.embedded_store import open_embedded_store
    from control_plane.storage.sqlite.db import Database

    connect = Database._connect
    if counter is not None:

        def counted(self: Database) -> Any:
            conn = connect(self)
            conn.set_trace_callback(lambda sql: counter.hit(sql.split(None, 1)[0].upper()))
            return conn

        Database._connect = counted  # type: ignore[method-assign]
    with tempfile.TemporaryDirectory(prefix="gpufleet-bench-") as tmp:
        settings = Settings(
            embedded=True,
            data_dir=Path(tmp),
            jwt_secret="bench-signing-key-0123456789abcdef0123456789",  # type: ignore[arg-type]
            max_queue_depth=10**9,
            tenant_max_queued=0,  # no tenant quota: the queue is the subject
            **overrides,
        )
        stores = open_embedded_store(settings)
        try:
            svc = build_services(settings, stores)
            push_model_to(svc.models, stores)  # type: ignore[arg-type]
            yield svc
        finally:
            Database._connect = connect  # type: ignore[method-assign]
            stores.close()


@contextmanager
def moto_services(
    endpoint: str, counter: CallCounter | None = None, **overrides: Any
) -> Iterator[Services]:
    """Every service on fresh tables of the moto server at ``endpoint`` (DynamoDB API calls
    counted into ``counter``), add_sub READY."""
    tag = uuid.uuid4().hex[:8]
    settings = Settings(
        dynamodb_endpoint_url=endpoint,
        s3_endpoint_url=endpoint,
        table_prefix=f"bc{tag}",
        bucket=f"bc{tag}",
        jwt_secret="bench-signing-key-0123456789abcdef0123456789",  # type: ignore[arg-type]
        max_queue_depth=10**9,
        tenant_max_queued=0,  # no tenant quota: the queue is the subject
        **overrides,
    )
    stores = dynamo_stores(settings)
    db, s3 = stores.extra["dynamodb"], stores.extra["s3"]
    create_all(db, s3, settings.table_prefix, settings.bucket, settings.aws_region)
    svc = build_services(settings, stores)
    push_model_to(svc.models, stores)  # type: ignore[arg-type]
    if counter is not None:
        db.meta.events.register(
            "before-call.dynamodb.*", lambda model, **kw: counter.hit(model.name)
        )
    yield svc


def _complete_all(jobs: Any, leased: list[Any], batch: bool) -> None:
    item = getattr(wire, "CompleteItem", None)
    if batch and item is not None and hasattr(jobs, "complete_batch"):
        for i in range(0, len(leased), 100):
            items = [
                item(job_id=x.id, lease_token=x.lease_token, status="SUCCEEDED", outputs=OUTPUTS)
                for x in leased[i : i + 100]
            ]
            jobs.complete_batch("run_calls", items)
        return
    for x in leased:
        done = CompleteRequest(lease_token=x.lease_token, status="SUCCEEDED", outputs=OUTPUTS)
        jobs.complete("run_calls", x.id, done)


def count_client_flow(svc: Services, counter: CallCounter, n: int) -> None:
    """One job at a time as the SDK sends it: a submit with an Idempotency-Key, a long poll
    waiting for it (``Prefer: wait``: the submit's own view is known to the wait where the
    service takes it), the runner's long-poll lease and its complete, the wait's answer."""
    import inspect

    jobs: Any = svc.jobs
    takes_known = "known" in inspect.signature(jobs.wait).parameters
    req = LeaseRequest(models=[ModelRef(name="add_sub", version="1")], max_jobs=1, wait_s=1.0)

    async def one(i: int) -> None:
        counter.phase = "submit"
        view = jobs.submit(USER, job(), f"calls-{i}")[0]
        counter.phase = "read"
        known = {"known": view} if takes_known else {}
        waiter = asyncio.ensure_future(jobs.wait(USER, view.id, 10.0, **known))
        await asyncio.sleep(0.05)  # the wait's first round (a read, unless it knows)
        counter.phase = "lease"
        [leased] = (await jobs.lease("run_calls", None, req)).jobs
        counter.phase = "complete"
        done = CompleteRequest(lease_token=leased.lease_token, status="SUCCEEDED", outputs=OUTPUTS)
        jobs.complete("run_calls", leased.id, done)
        counter.phase = "read"
        assert (await waiter).status == "SUCCEEDED"
        counter.phase = "idle"

    async def run() -> None:
        for i in range(n):
            await one(i)

    asyncio.run(run())


def count_flow(svc: Services, counter: CallCounter, n: int, batch: bool) -> None:
    """submit -> lease -> complete -> terminal read of ``n`` jobs, one phase at a time."""
    jobs: Any = svc.jobs
    loop = asyncio.new_event_loop()
    try:
        counter.phase = "submit"
        if batch:
            ids: list[str] = []
            for start in range(0, n, 100):
                reqs = [job() for _ in range(min(100, n - start))]
                ids += jobs.submit_batch(USER, reqs)
        else:
            ids = [jobs.submit(USER, job())[0].id for _ in range(n)]
        counter.phase = "lease"
        leased: list[Any] = []
        for _ in range(10 * n):
            if len(leased) >= n:
                break
            want = min(100, n - len(leased)) if batch else 1
            req = LeaseRequest(models=[ModelRef(name="add_sub", version="1")], max_jobs=want)
            leased += loop.run_until_complete(jobs.lease("run_calls", None, req)).jobs
        assert len(leased) == n, f"leased {len(leased)} of {n}"
        counter.phase = "complete"
        _complete_all(jobs, leased, batch)
        counter.phase = "read"
        if batch:

            async def waits() -> list[Any]:
                return list(await asyncio.gather(*(jobs.wait(USER, i, 5.0) for i in ids)))

            views = loop.run_until_complete(waits())
        else:
            views = [jobs.get(USER, i) for i in ids]
        assert all(v.status == "SUCCEEDED" for v in views)
        counter.phase = "idle"
    finally:
        loop.close()


def calls_main(n: int) -> None:
    """Print storage calls per job by phase and operation, single vs batch, both stores."""
    import logging

    logging.disable(logging.INFO)
    rows: list[tuple[str, str, str, float, str]] = []

    def record(backend: str, flow: str, counter: CallCounter) -> None:
        for phase in PHASES:
            ops = counter.calls.get(phase, Counter())
            detail = ", ".join(f"{op} {c / n:.2f}" for op, c in sorted(ops.items()))
            rows.append((backend, flow, phase, sum(ops.values()) / n, detail))
        total = sum(sum(counter.calls.get(p, Counter()).values()) for p in PHASES) / n
        rows.append((backend, flow, "TOTAL", total, ""))

    from control_plane.embedded import serialized_moto_server

    port = free_port()
    server = serialized_moto_server(port)
    server.start()
    try:
        for flow in ("single", "batch", "client"):
            counter = CallCounter()
            with moto_services(f"http://127.0.0.1:{port}", counter) as svc:
                if flow == "client":
                    count_client_flow(svc, counter, n)
                else:
                    count_flow(svc, counter, n, flow == "batch")
            record("dynamodb", flow, counter)
    finally:
        server.stop()
    for flow in ("single", "batch", "client"):
        counter = CallCounter()
        with sqlite_services(counter) as svc:
            if flow == "client":
                count_client_flow(svc, counter, n)
            else:
                count_flow(svc, counter, n, flow == "batch")
        record("sqlite", flow, counter)
    print(f"\nstorage calls per job ({n} jobs; sqlite: statements, BEGIN = a write transaction)")
    print(f"{'store':<9} {'flow':<7} {'phase':<9} {'calls/job':>9}  by operation")
    for backend, flow, phase, per_job, detail in rows:
        print(f"{backend:<9} {flow:<7} {phase:<9} {per_job:9.2f}  {detail}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smaller sizes (100/2k/10k stored)")
    ap.add_argument("-n", type=int, default=0, help="operations per measurement")
    ap.add_argument("--calls", action="store_true", help="count storage calls per job instead")
    args = ap.parse_args()
    if args.calls:
        calls_main(args.n or 200)
        return
    if args.quick:
        cases = [("small", 100, 10), ("medium", 2_000, 200), ("large", 10_000, 1_000)]
    else:
        cases = [("small", 100, 10), ("medium", 10_000, 1_000), ("large", 100_000, 10_000)]
    n = args.n or (100 if args.quick else 200)

    import logging

    logging.disable(logging.INFO)
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    results = {}
    try:
        for name, finished, queued in cases:
            print(f"# {name}: loading {finished} finished + {queued} queued ...", flush=True)
            results[name] = run_case(endpoint, finished, queued, n)
            print(f"#   loaded in {results[name]['_load_s'][0]:.1f} s", flush=True)
    finally:
        server.stop()
    print(f"\n{n} ops each, sequential, JobService -> moto over HTTP (127.0.0.1)")
    print(f"{'case':<8} {'stored':>16} {'op':<9} {'ops/s':>8} {'p50 ms':>8} {'p99 ms':>8}")
    for name, finished, queued in cases:
        for op in ("submit", "lease", "complete"):
            rate, p50, p99 = results[name][op]
            stored = f"{finished}+{queued}q"
            print(f"{name:<8} {stored:>16} {op:<9} {rate:8.1f} {p50:8.2f} {p99:8.2f}")
    ratio = results[cases[-1][0]]["lease"][1] / results[cases[0][0]]["lease"][1]
    print(f"\nlease p50 ratio {cases[-1][0]}/{cases[0][0]}: {ratio:.2f}x (target <= 2x)")
    mean_ratio = results[cases[0][0]]["lease"][0] / results[cases[-1][0]]["lease"][0]
    print(f"lease mean ratio {cases[-1][0]}/{cases[0][0]}: {mean_ratio:.2f}x")


if __name__ == "__main__":
    main()
