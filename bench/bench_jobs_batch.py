"""Durable-job throughput in batches, in one process, without Triton or HTTP.

``JobService`` on a store (the embedded SQLite file by default, ``--store moto`` for DynamoDB
on a moto server over HTTP) and one simulated runner in the same process, shaped like
``runner/jobloop.py``: a lease task asking for all its free slots (``lease(max_jobs<=100)``)
and a completion task sending what finished while its previous call ran
(``complete_batch`` of up to 100). Inference is instant, so the numbers are the control
plane's and the store's cost per job.

Two phases:

- saturated: ``-n`` jobs submitted in batches of ``--batch`` as fast as the submitter thread
  can, while the runner drains the queue. jobs/s = n / (first submit -> last terminal).
  Submit -> terminal here includes the time spent queued behind the others.
- paced: n/5 jobs submitted in batches at a quarter of the saturated rate, each awaited by a
  client long poll (``JobService.wait``, its reads shared across waits): the submit -> terminal
  latency a client sees when the fleet keeps up.

    .venv/bin/python bench/bench_jobs_batch.py                   # SQLite, 10,000 jobs
    .venv/bin/python bench/bench_jobs_batch.py --store moto -n 2000
    .venv/bin/python bench/bench_jobs_batch.py -n 2000 --tenants 3   # fair leasing at work
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

sys.path[:0] = [str(Path(__file__).resolve().parents[1])]

from gpufleet.wire import (  # noqa: E402
    TERMINAL_STATUSES,
    CompleteItem,
    CompleteRequest,
    LeasedJob,
    LeaseRequest,
    ModelRef,
)

from bench.bench_queue import (  # noqa: E402
    OUTPUTS,
    USER,
    free_port,
    moto_services,
    sqlite_services,
)
from control_plane.composition import Services  # noqa: E402
from tests.contract.fleet import job, principal  # noqa: E402

RUNNER = "run_bench"
MODELS = [ModelRef(name="add_sub", version="1")]


@dataclass
class Run:
    """What one phase measured (seconds, ``time.perf_counter``)."""

    submitted: dict[str, float] = field(default_factory=dict)
    terminal: dict[str, float] = field(default_factory=dict)
    lease_s: list[float] = field(default_factory=list)
    complete_s: list[float] = field(default_factory=list)
    submit_s: list[float] = field(default_factory=list)
    leased: int = 0
    batch_sizes: list[int] = field(default_factory=list)
    cpu_s: float = 0.0  # CPU time of the whole process (every thread) during the phase


class SimRunner:
    """One runner: a lease task (all free slots, <= 100 per call) and a completion task."""

    def __init__(self, svc: Services, run: Run, slots: int) -> None:
        self._jobs: Any = svc.jobs
        self._run = run
        self._slots = slots
        self._inflight = 0
        self._finished: list[LeasedJob] = []
        self._wake = asyncio.Event()
        self._freed = asyncio.Event()

    async def lease_loop(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            free = self._slots - self._inflight
            if free <= 0:
                self._freed.clear()
                await self._freed.wait()
                continue
            req = LeaseRequest(models=MODELS, max_jobs=min(free, 100), wait_s=0.5)
            t = time.perf_counter()
            got = (await self._jobs.lease(RUNNER, None, req)).jobs
            if got:
                self._run.lease_s.append(time.perf_counter() - t)
                self._run.leased += len(got)
            self._inflight += len(got)
            self._finished.extend(got)  # inference is instant here
            self._wake.set()

    def _complete(self, items: list[CompleteItem]) -> list[Any]:
        if hasattr(self._jobs, "complete_batch"):
            return list(self._jobs.complete_batch(RUNNER, items))
        # A control plane from before batch completes (to compare): one call per result.
        return [
            SimpleNamespace(status="committed")
            for x in items
            if self._jobs.complete(
                RUNNER, x.job_id, CompleteRequest(**x.model_dump(exclude={"job_id"}))
            )
        ]

    async def complete_loop(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await self._wake.wait()
            self._wake.clear()
            while self._finished:
                batch, self._finished = self._finished[:100], self._finished[100:]
                items = [
                    CompleteItem(
                        job_id=x.id, lease_token=x.lease_token, status="SUCCEEDED", outputs=OUTPUTS
                    )
                    for x in batch
                ]
                t = time.perf_counter()
                out = await asyncio.to_thread(self._complete, items)
                self._run.complete_s.append(time.perf_counter() - t)
                self._run.batch_sizes.append(len(batch))
                assert all(r.status == "committed" for r in out), out
                self._inflight -= len(batch)
                self._freed.set()


def submit_all(
    svc: Services, run: Run, n: int, batch: int, every_s: float = 0.0, tenants: int = 1
) -> None:
    """Submit ``n`` jobs in batches (one every ``every_s`` seconds at most), in this thread;
    with ``tenants`` > 1 the batches take turns among that many tenants (admin keys of
    tenants t0, t1, …, at priorities 100, 99, …: fair leasing interleaves them)."""
    who = [USER] if tenants <= 1 else [principal(f"t{i}", "admin") for i in range(tenants)]
    start = time.perf_counter()
    for k, first in enumerate(range(0, n, batch)):
        if every_s:
            time.sleep(max(0.0, start + k * every_s - time.perf_counter()))
        tenant = k % len(who)
        reqs = [job(priority=100 - tenant) for _ in range(min(batch, n - first))]
        t = time.perf_counter()
        ids = svc.jobs.submit_batch(who[tenant], reqs)
        run.submit_s.append(time.perf_counter() - t)
        for job_id in ids:
            run.submitted[job_id] = t


async def saturated(svc: Services, n: int, batch: int, slots: int, tenants: int = 1) -> Run:
    run = Run()
    cpu = time.process_time()
    loop, all_done = asyncio.get_running_loop(), asyncio.Event()

    def on_transition(rec: Any, view: Any, previous: str | None) -> None:
        if rec.status in TERMINAL_STATUSES:
            run.terminal[rec.id] = time.perf_counter()
            if len(run.terminal) == n:
                loop.call_soon_threadsafe(all_done.set)

    assert svc.transitions is not None
    svc.transitions.on_record(on_transition)
    runner, stop = SimRunner(svc, run, slots), asyncio.Event()
    tasks = [
        asyncio.create_task(runner.lease_loop(stop)),
        asyncio.create_task(runner.complete_loop(stop)),
    ]
    await asyncio.to_thread(submit_all, svc, run, n, batch, 0.0, tenants)
    await all_done.wait()
    run.cpu_s = time.process_time() - cpu
    stop.set()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    svc.transitions.records.remove(on_transition)
    return run


async def paced(svc: Services, n: int, batch: int, slots: int, rate: float) -> Run:
    """``n`` jobs at ``rate`` jobs/s, each awaited by a client long poll."""
    run = Run()
    cpu = time.process_time()
    runner, stop = SimRunner(svc, run, slots), asyncio.Event()
    tasks = [
        asyncio.create_task(runner.lease_loop(stop)),
        asyncio.create_task(runner.complete_loop(stop)),
    ]
    loop = asyncio.get_running_loop()
    waits: list[asyncio.Future[Any]] = []

    async def wait(job_id: str) -> None:
        while True:
            view = await svc.jobs.wait(USER, job_id, 30.0)
            if view.status in TERMINAL_STATUSES:
                run.terminal[job_id] = time.perf_counter()
                return

    def submit_and_wait() -> None:
        start = time.perf_counter()
        for k, first in enumerate(range(0, n, batch)):
            time.sleep(max(0.0, start + k * batch / rate - time.perf_counter()))
            reqs = [job() for _ in range(min(batch, n - first))]
            t = time.perf_counter()
            ids = svc.jobs.submit_batch(USER, reqs)
            run.submit_s.append(time.perf_counter() - t)
            for job_id in ids:
                run.submitted[job_id] = t
                waits.append(asyncio.run_coroutine_threadsafe(wait(job_id), loop))  # type: ignore[arg-type]

    await asyncio.to_thread(submit_and_wait)
    await asyncio.gather(*(asyncio.wrap_future(w) for w in waits))  # type: ignore[arg-type]
    run.cpu_s = time.process_time() - cpu
    stop.set()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return run


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * q))] * 1000 if values else float("nan")


@contextmanager
def store_services(store: str) -> Iterator[Services]:
    if store == "sqlite":
        with sqlite_services(poll_interval_s=0.5) as svc:
            yield svc
        return
    from control_plane.embedded import serialized_moto_server

    port = free_port()
    server = serialized_moto_server(port)
    server.start()
    try:
        with moto_services(f"http://127.0.0.1:{port}", poll_interval_s=0.5) as svc:
            yield svc
    finally:
        server.stop()


def report(store: str, phase: str, run: Run, n: int) -> tuple[str, ...]:
    first = min(run.submitted.values())
    wall = max(run.terminal.values()) - first
    latency = [run.terminal[i] - run.submitted[i] for i in run.terminal]
    mean_batch = statistics.mean(run.batch_sizes) if run.batch_sizes else 0.0
    return (
        store,
        phase,
        str(n),
        f"{n / wall:8.0f}",
        f"{pct(latency, 0.5):8.1f}",
        f"{pct(latency, 0.99):8.1f}",
        f"{pct(run.submit_s, 0.5):7.1f}",
        f"{pct(run.lease_s, 0.5):7.1f}",
        f"{pct(run.complete_s, 0.5):7.1f}",
        f"{mean_batch:5.1f}",
        f"{run.cpu_s / n * 1000:6.2f}",
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", choices=["sqlite", "moto"], default="sqlite")
    ap.add_argument("-n", type=int, default=10_000, help="jobs of the saturated phase")
    ap.add_argument("--batch", type=int, default=100, help="jobs per batch submit")
    ap.add_argument("--slots", type=int, default=100, help="the runner's max_concurrency")
    ap.add_argument("--no-paced", action="store_true", help="skip the paced (latency) phase")
    ap.add_argument(
        "--tenants", type=int, default=1, help="tenants taking turns in the saturated phase"
    )
    args = ap.parse_args()
    logging.disable(logging.WARNING)
    rows = []
    with store_services(args.store) as svc:
        sat = asyncio.run(saturated(svc, args.n, args.batch, args.slots, args.tenants))
        assert len(sat.terminal) == args.n and sat.leased == args.n
        phase = "saturated" if args.tenants <= 1 else f"saturated x{args.tenants}"
        rows.append(report(args.store, phase, sat, args.n))
        rate = args.n / (max(sat.terminal.values()) - min(sat.submitted.values()))
        if not args.no_paced:
            n = max(args.batch, args.n // 5)
            run = asyncio.run(paced(svc, n, args.batch, args.slots, rate / 4))
            rows.append(report(args.store, f"paced {rate / 4:.0f}/s", run, n))
        depths = svc.jobs.queue_depths()
        assert depths.get("add_sub", 0) == 0, depths
    print(f"\nbatches of {args.batch}, one runner ({args.slots} slots), submit -> terminal")
    print("(sub/lease/compl: p50 ms of one batch call, a lease's long-poll wait included;")
    print(" batch: mean results per complete_batch; cpu: process CPU time, every thread)")
    print(
        f"{'store':<7} {'phase':<14} {'jobs':>6} {'jobs/s':>8} {'p50 ms':>8} {'p99 ms':>8} "
        f"{'sub ms':>7} {'lease':>7} {'compl':>7} {'batch':>5} {'cpu ms/job':>10}"
    )
    for r in rows:
        print(
            f"{r[0]:<7} {r[1]:<14} {r[2]:>6} {r[3]} {r[4]} {r[5]} {r[6]} {r[7]} {r[8]} {r[9]}"
            f" {r[10]:>10}"
        )


if __name__ == "__main__":
    main()
