"""Embedded stores side by side: the JobService on SQLite (``--embedded``) and on moto
(``--embedded-moto``), in process, with few and with many jobs stored.

Stores are built as the control plane builds them: ``open_embedded_store(settings,
data_dir)`` for SQLite (a temporary data directory, WAL, ``synchronous=NORMAL``);
``dynamo_stores(settings)`` on a ``serialized_moto_server`` with ``create_all`` for moto;
services through ``build_services(settings, stores)``. The stored jobs are written through
the store protocols in batches (``create_jobs``, ``enqueue_many``, ``put_markers``,
``add_depth``), the same calls a batch submit makes, so both backends hold the same rows.

Cases per backend:
  small   100 finished +    10 queued
  large   100k finished + 10k queued     SQLite (--sqlite-large N: N finished + N/10 queued)
          10k finished +  1k queued      moto   (--moto-large N; loading moto runs at a few
                                                 hundred rows/s, so 100k takes many minutes:
                                                 say --moto-large 100000 to see it)

Each case times N sequential submits, N leases (max_jobs=1, wait_s=0) and N completes
(``-n``, default 200) and prints ops/s, p50 and p99 per operation, the lease p50 ratio
large/small per backend, and the CPU milliseconds one job costs (submit + lease + complete,
``time.process_time`` of this process: the moto server runs in it too, so both columns
count the whole store).

    .venv/bin/python bench/bench_embedded.py            # both backends, default sizes
    .venv/bin/python bench/bench_embedded.py --quick    # 2k / 500 large, 100 ops
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import random
import shutil
import socket
import statistics
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "sdk")]
os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")

import httpx  # noqa: E402
from gpufleet.wire import (  # noqa: E402
    CommitRequest,
    CompleteRequest,
    CreateVersionRequest,
    FileSpec,
    JobRequest,
    LeasedJob,
    LeaseRequest,
    ModelRef,
    Tensor,
)
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from control_plane.composition import Services, build_services  # noqa: E402
from control_plane.services.models import object_key  # noqa: E402
from control_plane.services.principal import ROLE_SCOPES, Principal  # noqa: E402
from control_plane.services.queue_ops import stable_shard  # noqa: E402
from control_plane.settings import Settings  # noqa: E402
from control_plane.storage import queue_keys as keys  # noqa: E402
from control_plane.storage.protocols import JobRecord, Marker, QueueEntry  # noqa: E402
from control_plane.storage.stores import Stores  # noqa: E402

USER = Principal(sub="user@bench", tenant="bench", role="user", scopes=ROLE_SCOPES["user"])
RUNNER = "run_bench"
MODEL = "add_sub"
JWT = "bench-signing-key-0123456789abcdef0123456789"
PRELOAD_BATCH = 2_000
WARMUP = 10  # submit + lease + complete rounds before each measurement
OPS = ("submit", "lease", "complete")
console = Console()


# --------------------------------------------------------------------------- stores


@contextmanager
def sqlite_backend() -> Iterator[tuple[Settings, Stores]]:
    """The embedded SQLite store in a fresh temporary data directory."""
    from control_plane.storage.embedded_store import open_embedded_store

    data_dir = Path(tempfile.mkdtemp(prefix="gpufleet-bench-"))
    settings = Settings(
        embedded=True,
        data_dir=data_dir,
        jwt_secret=JWT,  # type: ignore[arg-type]
        max_queue_depth=10**9,
        tenant_max_queued=0,  # no tenant quota: the queue is the subject
    )
    stores = open_embedded_store(settings, data_dir)
    try:
        yield settings, stores
    finally:
        stores.close()
        shutil.rmtree(data_dir, ignore_errors=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def moto_backend() -> Iterator[tuple[Settings, Stores]]:
    """DynamoDB + S3 adapters on a fresh serialized moto server (what --embedded-moto runs)."""
    from control_plane.embedded import serialized_moto_server
    from control_plane.storage.aws import make_clients
    from control_plane.storage.definitions import create_all
    from control_plane.storage.stores import dynamo_stores

    port = _free_port()
    server = serialized_moto_server(port)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    tag = uuid.uuid4().hex[:8]
    settings = Settings(
        dynamodb_endpoint_url=endpoint,
        s3_endpoint_url=endpoint,
        table_prefix=f"be{tag}",
        bucket=f"be{tag}",
        jwt_secret=JWT,  # type: ignore[arg-type]
        max_queue_depth=10**9,
        tenant_max_queued=0,  # no tenant quota: the queue is the subject
    )
    try:
        dynamodb, s3 = make_clients(settings)
        create_all(dynamodb, s3, settings.table_prefix, settings.bucket, settings.aws_region)
        stores = dynamo_stores(settings)
        try:
            yield settings, stores
        finally:
            stores.close()
    finally:
        server.stop()


BACKENDS: dict[str, Callable[[], Any]] = {"sqlite": sqlite_backend, "moto": moto_backend}


# --------------------------------------------------------------------------- fixtures


def add_sub_files() -> dict[str, bytes]:
    repo = ROOT / "model_repository" / MODEL
    return {
        "config.pbtxt": (repo / "config.pbtxt").read_bytes(),
        "1/model.py": (repo / "1" / "model.py").read_bytes(),
    }


def push_model(services: Services, stores: Stores) -> None:
    """Create add_sub v1, store its files, commit (READY)."""
    import hashlib

    files = add_sub_files()
    specs = [
        FileSpec(path=p, size=len(b), sha256=hashlib.sha256(b).hexdigest())
        for p, b in files.items()
    ]
    created = services.models.create_version(USER, MODEL, CreateVersionRequest(files=specs))
    put_bytes = getattr(stores.blobs, "put_bytes", None)
    with httpx.Client(timeout=30) as http:
        for target in created.uploads:
            if put_bytes is not None:  # local blobs: no server here to serve the URL
                put_bytes(object_key(MODEL, created.version, target.path), files[target.path])
            else:
                assert target.url is not None
                resp = http.put(target.url, content=files[target.path], headers=target.headers)
                resp.raise_for_status()
    services.models.commit(USER, MODEL, created.version, CommitRequest())


def job_request() -> JobRequest:
    data = [float(i) for i in range(4)]
    return JobRequest(
        model=MODEL,
        inputs=[
            Tensor(name="INPUT0", datatype="FP32", shape=[1, 4], data=data),
            Tensor(name="INPUT1", datatype="FP32", shape=[1, 4], data=data),
        ],
    )


def preload(
    settings: Settings, stores: Stores, request: dict[str, Any], finished: int, queued: int
) -> None:
    """``finished`` SUCCEEDED jobs and ``queued`` claimable ones (entries, TTL markers, depth)."""
    t0 = time.time() - 3600
    table, queue = stores.jobs.jobs, stores.jobs.queue

    def record(i: int, status: str) -> JobRecord:
        return JobRecord(
            id=f"job_pre{i:07d}{uuid.uuid4().hex[:8]}",
            tenant=USER.tenant,
            model=MODEL,
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

    for start in range(0, finished, PRELOAD_BATCH):
        table.create_jobs(
            [record(i, "SUCCEEDED") for i in range(start, min(finished, start + PRELOAD_BATCH))]
        )
    depth: Counter[int] = Counter()
    for start in range(0, queued, PRELOAD_BATCH):
        jobs, entries, markers = [], [], []
        for i in range(start, min(queued, start + PRELOAD_BATCH)):
            rec = record(finished + i, "QUEUED")
            n = random.randrange(settings.queue_shards)
            shard = keys.queue_shard(MODEL, n)
            sk = keys.queue_sk(rec.priority, rec.created_at, rec.id)
            rec.queue_key, rec.queue_token = (shard, sk), uuid.uuid4().hex[:12]
            jobs.append(rec)
            entries.append(
                QueueEntry(shard, sk, rec.id, "", "", rec.ttl_deadline, rec.queue_token, 600)
            )
            ttl = keys.QUEUE_KEYS.ttl_marker(
                stable_shard(rec.id, settings.lease_shards), rec.id, rec.ttl_deadline
            )
            m_shard, m_sk = ttl.shard, ttl.sk
            markers.append(Marker(m_shard, m_sk, rec.id))
            depth[n] += 1
        queue.put_markers(markers)
        queue.enqueue_many(entries)
        table.create_jobs(jobs)
    for n, count in depth.items():
        queue.add_depth(MODEL, n, count)


# --------------------------------------------------------------------------- measuring


@dataclass
class Result:
    backend: str
    case: str
    finished: int
    queued: int
    load_s: float
    lat: dict[str, list[float]] = field(default_factory=dict)
    cpu_s: dict[str, float] = field(default_factory=dict)

    def stats(self, op: str) -> tuple[float, float, float]:
        """(ops/s, p50 ms, p99 ms)."""
        lat = sorted(self.lat[op])
        p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))]
        return len(lat) / sum(lat), statistics.median(lat) * 1000, p99 * 1000

    def cpu_ms_per_job(self) -> float:
        return sum(self.cpu_s.values()) * 1000 / len(self.lat["submit"])


def timed(fn: Callable[[], Any], n: int) -> tuple[list[float], list[Any], float]:
    """``n`` calls of ``fn``: latencies, results and the CPU seconds they took."""
    lat, out = [], []
    cpu = time.process_time()
    for _ in range(n):
        t = time.perf_counter()
        out.append(fn())
        lat.append(time.perf_counter() - t)
    return lat, out, time.process_time() - cpu


def run_case(backend: str, case: str, finished: int, queued: int, n: int) -> Result:
    with BACKENDS[backend]() as (settings, stores):
        services = build_services(settings, stores)
        jobs = services.jobs
        push_model(services, stores)
        first, _ = jobs.submit(USER, job_request())
        stored = stores.jobs.jobs.get_job(first.id)
        assert stored is not None
        t = time.perf_counter()
        preload(settings, stores, stored.request, finished, queued)
        result = Result(backend, case, finished, queued, time.perf_counter() - t)

        loop = asyncio.new_event_loop()
        req = LeaseRequest(models=[ModelRef(name=MODEL, version="1")], max_jobs=1, wait_s=0)

        def lease_one() -> LeasedJob:
            return loop.run_until_complete(jobs.lease(RUNNER, None, req)).jobs[0]

        def complete(leased: LeasedJob) -> Any:
            done = CompleteRequest(lease_token=leased.lease_token, status="SUCCEEDED")
            return jobs.complete(RUNNER, leased.id, done)

        try:
            for _ in range(WARMUP):  # first calls open connections and fill caches
                jobs.submit(USER, job_request())
                complete(lease_one())
            lat, _, cpu = timed(lambda: jobs.submit(USER, job_request()), n)
            result.lat["submit"], result.cpu_s["submit"] = lat, cpu
            lat, leased, cpu = timed(lease_one, n)
            result.lat["lease"], result.cpu_s["lease"] = lat, cpu
            it = iter(leased)
            lat, _, cpu = timed(lambda: complete(next(it)), n)
            result.lat["complete"], result.cpu_s["complete"] = lat, cpu
        finally:
            loop.close()
        return result


# --------------------------------------------------------------------------- report


def report(results: list[Result], n: int, moto_large: int, sqlite_large: int) -> None:
    table = Table(
        title=f"JobService in process, {n} sequential ops each (SQLite vs moto)",
        caption="stored = finished + queued jobs before the run",
    )
    for col in ("backend", "case", "stored", "op", "ops/s", "p50 ms", "p99 ms"):
        table.add_column(col, justify="right" if col not in ("backend", "op") else "left")
    for r in results:
        for op in OPS:
            rate, p50, p99 = r.stats(op)
            table.add_row(
                r.backend,
                r.case,
                f"{r.finished:,}+{r.queued:,}q",
                op,
                f"{rate:,.0f}",
                f"{p50:.2f}",
                f"{p99:.2f}",
                end_section=op == OPS[-1],
            )
    console.print(table)

    summary = Table(title="per backend")
    for col in ("backend", "lease p50 large/small", "CPU ms/job small", "CPU ms/job large",
                "preload large (s)"):  # fmt: skip
        summary.add_column(col, justify="right" if col != "backend" else "left")
    by = {(r.backend, r.case): r for r in results}
    for backend in dict.fromkeys(r.backend for r in results):
        small, large = by.get((backend, "small")), by.get((backend, "large"))
        if small is None or large is None:
            continue
        ratio = large.stats("lease")[1] / small.stats("lease")[1]
        summary.add_row(
            backend,
            f"{ratio:.2f}x",
            f"{small.cpu_ms_per_job():.2f}",
            f"{large.cpu_ms_per_job():.2f}",
            f"{large.load_s:.1f}",
        )
    console.print(summary)
    console.print(
        f"large = {sqlite_large:,} finished + {sqlite_large // 10:,} queued on SQLite, "
        f"{moto_large:,} + {moto_large // 10:,} on moto (--moto-large N: preloading moto "
        "runs at a few hundred rows/s, 100k takes many minutes). CPU ms/job: "
        "time.process_time of submit + lease + complete per job in this process (moto's "
        "server threads included)."
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("-n", type=int, default=0, help="operations per measurement (200)")
    ap.add_argument("--quick", action="store_true", help="large = 2k (SQLite) / 500 (moto)")
    ap.add_argument("--backends", default="sqlite,moto", help="comma-separated: sqlite,moto")
    ap.add_argument("--sqlite-large", type=int, default=100_000, help="finished jobs (large)")
    ap.add_argument("--moto-large", type=int, default=10_000, help="finished jobs (large) on moto")
    args = ap.parse_args()
    n = args.n or (100 if args.quick else 200)
    sqlite_large, moto_large = (2_000, 500) if args.quick else (args.sqlite_large, args.moto_large)
    large = {"sqlite": sqlite_large, "moto": moto_large}
    logging.disable(logging.WARNING)
    results = []
    for backend in args.backends.split(","):
        for case, finished in (("small", 100), ("large", large[backend])):
            queued = max(10, finished // 10)
            console.print(f"[dim]{backend} {case}: {finished:,} finished + {queued:,} queued…")
            r = run_case(backend, case, finished, queued, n)
            console.print(f"[dim]  preloaded in {r.load_s:.1f} s")
            results.append(r)
    report(results, n, moto_large, sqlite_large)


if __name__ == "__main__":
    main()
