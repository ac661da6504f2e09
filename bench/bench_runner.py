"""Runner benchmark: what the fleet paths cost over calling Triton directly.

One Triton container (CPU image, ``add_sub``), started by a real runner process (docker
backend) against a real embedded control plane process, both on loopback. The same
requests go, side by side at each concurrency:

  direct http        tritonclient.http (aio) straight to that Triton's HTTP port
  direct grpc        tritonclient.grpc (aio) straight to that Triton's gRPC port
  kserve http        tritonclient.http (aio) to the control plane's /v2 (bearer token):
                     dispatched in memory to the runner over its channel
  kserve grpc        tritonclient.grpc (aio) to the control plane's KServe gRPC port
  sdk infer          the SDK's ``infer()`` (POST /v1/models/add_sub/infer), dispatched
  job                SDK submit + wait: durable job, lease → Triton → complete → wait
  job (prefer wait)  the same job in one call: SDK submit(wait=…) (``Prefer: wait``)

for each store of the embedded control plane (``--stores sqlite,moto``: the SQLite default
and the moto-backed DynamoDB/S3 emulation).

and the table shows p50/p99 latency and throughput of each, and the fleet's overhead.
Every answer is checked against numpy. A private Docker engine is started when none is
reachable (tests/rig.py), and everything is stopped by pid at the end.

    .venv/bin/python bench/bench_runner.py [--requests 100] [--concurrency 1,8,32]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "sdk")]

from gpufleet import Client  # noqa: E402
from gpufleet.aio import AsyncClient  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from tests import rig  # noqa: E402
from tests.helpers.procs import (  # noqa: E402
    ControlPlaneProc,
    RunnerProc,
    start_control_plane,
)

MODEL = "add_sub"
TERMINAL = ("SUCCEEDED", "FAILED", "CANCELLED", "TIMED_OUT")
console = Console(width=140)  # the table on one line per row, also when piped


@dataclass
class Result:
    store: str
    path: str
    concurrency: int
    latencies_ms: list[float]
    wall_s: float
    stages: dict[str, list[float]] = field(default_factory=dict)  # fleet: where time went
    cpu_ms_per_job: dict[str, float] = field(default_factory=dict)  # fleet: per process

    @property
    def p50(self) -> float:
        return statistics.median(self.latencies_ms)

    @property
    def p99(self) -> float:
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]

    @property
    def throughput(self) -> float:
        return len(self.latencies_ms) / self.wall_s


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _case(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    a = rng.uniform(-10, 10, (1, 4)).astype(np.float32)
    b = rng.uniform(-10, 10, (1, 4)).astype(np.float32)
    return a, b


ROW_MIN_S = 0.0  # --seconds: the least time each measured row runs (set by main)


def _check(a: np.ndarray, b: np.ndarray, out0: np.ndarray, out1: np.ndarray) -> None:
    if not (np.allclose(out0, a + b) and np.allclose(out1, a - b)):
        raise SystemExit(f"bench: wrong answer for {a.tolist()}, {b.tolist()}")


async def _drive(
    n: int,
    concurrency: int,
    one: Callable[[np.random.Generator], Awaitable[None]],
    min_s: float = 0.0,
) -> tuple[list[float], float]:
    """At least ``n`` calls of ``one`` by ``concurrency`` workers, going on until ``min_s``
    seconds have passed; (latencies ms, wall s)."""
    latencies: list[float] = []
    start = time.perf_counter()
    stop_at = start + min_s
    started = 0

    async def worker(seed: int) -> None:
        nonlocal started
        rng = np.random.default_rng(seed)
        while started < n or time.perf_counter() < stop_at:
            started += 1
            t0 = time.perf_counter()
            await one(rng)
            latencies.append((time.perf_counter() - t0) * 1000)

    await asyncio.gather(*(worker(i) for i in range(concurrency)))
    return latencies, time.perf_counter() - start


async def bench_kserve_http(
    host_port: str, n: int, concurrency: int, token: str | None, path: str
) -> Result:
    """tritonclient.http (aio) to ``host_port``: Triton itself, or the control plane (same
    JSON tensors both ways, so the rows compare like for like)."""
    import tritonclient.http.aio as httpclient

    client = httpclient.InferenceServerClient(host_port, conn_limit=concurrency)
    headers = {"Authorization": f"Bearer {token}"} if token else None

    async def one(rng: np.random.Generator) -> None:
        a, b = _case(rng)
        inputs = []
        for name, arr in (("INPUT0", a), ("INPUT1", b)):
            item = httpclient.InferInput(name, list(arr.shape), "FP32")
            item.set_data_from_numpy(arr, binary_data=False)
            inputs.append(item)
        result = await client.infer(MODEL, inputs, headers=headers)
        _check(a, b, result.as_numpy("OUTPUT0"), result.as_numpy("OUTPUT1"))

    try:
        await _drive(min(n, 20), concurrency, one)  # warm-up
        latencies, wall = await _drive(n, concurrency, one, ROW_MIN_S)
    finally:
        await client.close()
    return Result("", path, concurrency, latencies, wall)


async def bench_kserve_grpc(
    host_port: str, n: int, concurrency: int, token: str | None, path: str
) -> Result:
    """tritonclient.grpc (aio) to ``host_port``: Triton itself, or the control plane."""
    import tritonclient.grpc.aio as grpcclient

    client = grpcclient.InferenceServerClient(host_port)
    headers = {"authorization": f"Bearer {token}"} if token else None

    async def one(rng: np.random.Generator) -> None:
        a, b = _case(rng)
        inputs = []
        for name, arr in (("INPUT0", a), ("INPUT1", b)):
            item = grpcclient.InferInput(name, list(arr.shape), "FP32")
            item.set_data_from_numpy(arr)
            inputs.append(item)
        result = await client.infer(MODEL, inputs, headers=headers)
        _check(a, b, result.as_numpy("OUTPUT0"), result.as_numpy("OUTPUT1"))

    try:
        await _drive(min(n, 20), concurrency, one)  # warm-up
        latencies, wall = await _drive(n, concurrency, one, ROW_MIN_S)
    finally:
        await client.close()
    return Result("", path, concurrency, latencies, wall)


async def bench_sdk_infer(url: str, api_key: str, n: int, concurrency: int) -> Result:
    async with AsyncClient(url, api_key=api_key, timeout=60.0) as fleet:

        async def one(rng: np.random.Generator) -> None:
            a, b = _case(rng)
            out = await fleet.infer(MODEL, {"INPUT0": a, "INPUT1": b}, timeout=60)
            _check(a, b, out["OUTPUT0"], out["OUTPUT1"])

        await _drive(min(n, 20), concurrency, one)  # warm-up
        latencies, wall = await _drive(n, concurrency, one, ROW_MIN_S)
    return Result("", "sdk infer", concurrency, latencies, wall)


async def bench_fleet(
    url: str, api_key: str, n: int, concurrency: int, prefer_wait: bool = False
) -> Result:
    """Durable jobs: ``submit`` then ``wait`` (two calls), or with ``prefer_wait`` one
    ``submit(wait=…)`` (``Prefer: wait``) that answers once the job is terminal."""
    async with AsyncClient(url, api_key=api_key, timeout=60.0) as fleet:
        stages: dict[str, list[float]] = {"submit": [], "queue": [], "run": []}

        async def one(rng: np.random.Generator) -> None:
            a, b = _case(rng)
            t0 = time.perf_counter()
            job = await fleet.submit(
                MODEL, {"INPUT0": a, "INPUT1": b}, wait=30.0 if prefer_wait else None
            )
            stages["submit"].append((time.perf_counter() - t0) * 1000)
            view = job if job.status in TERMINAL else await fleet.wait(job.id, timeout=120)
            stages["queue"].append(float(view.queue_ms or 0))  # created -> leased
            stages["run"].append(float(view.run_ms or 0))  # leased -> completed
            out = await fleet.outputs(view)
            _check(a, b, out["OUTPUT0"], out["OUTPUT1"])

        await _drive(min(n, 20), concurrency, one)  # warm-up
        for values in stages.values():
            values.clear()
        latencies, wall = await _drive(n, concurrency, one, ROW_MIN_S)
    return Result(
        "", "job (prefer wait)" if prefer_wait else "job", concurrency, latencies, wall, stages
    )


def configure_runner(cp: ControlPlaneProc, runner_id: str, max_concurrency: int) -> None:
    """``gpufleet-runner set``: room for every concurrent job, quick heartbeats."""
    with httpx.Client(base_url=cp.url, timeout=15) as http:
        token = http.post("/v1/auth/token", json={"api_key": cp.admin_key})
        token.raise_for_status()
        resp = http.patch(
            f"/v1/runners/{runner_id}/config",
            json={"max_concurrency": max_concurrency, "heartbeat_interval_s": 1.0},
            headers={"Authorization": f"Bearer {token.json()['access_token']}"},
        )
        resp.raise_for_status()


def access_token(cp: ControlPlaneProc) -> str:
    with httpx.Client(base_url=cp.url, timeout=15) as http:
        resp = http.post("/v1/auth/token", json={"api_key": cp.admin_key})
        resp.raise_for_status()
        return str(resp.json()["access_token"])


@contextlib.contextmanager
def fleet_stack(
    work: Path,
    docker_host: str | None,
    poll_s: float = 0.2,
    store: str = "sqlite",
    grpc_port: int | None = None,
    extra_env: dict[str, str] | None = None,
) -> Iterator[tuple[ControlPlaneProc, RunnerProc]]:
    """Engine, CPU Triton image, embedded control plane (``store``; with its KServe gRPC port
    when given), add_sub pushed, one runner (docker backend) with add_sub READY; all stopped
    by pid at the end."""
    stop_engine: Callable[[], None] = lambda: None  # noqa: E731
    if docker_host is None:
        console.print("bench: getting a Docker engine (a private one when none is reachable)")
        docker_host, stop_engine = rig.ensure_docker_engine(work / "engine")
    cp: ControlPlaneProc | None = None
    runner: RunnerProc | None = None
    try:
        image = rig.ensure_triton_image(docker_host)
        # the control plane's own default poll interval (waits and leases re-read storage)
        env = {"GPUFLEET_POLL_INTERVAL_S": str(poll_s)}
        if grpc_port is not None:
            env["GPUFLEET_GRPC_PORT"] = str(grpc_port)
        env.update(extra_env or {})
        cp = start_control_plane(work / "cp", env, store=store)
        with Client(cp.url, api_key=cp.admin_key, timeout=30.0) as client:
            client.models.push(rig.MODEL_REPOSITORY / MODEL)
            token = client.admin.create_join_token(region="default").join_token
        repository = work / "models"  # add_sub alone: nothing else loads in this Triton
        shutil.copytree(
            rig.MODEL_REPOSITORY / MODEL,
            repository / MODEL,
            ignore=shutil.ignore_patterns("__pycache__"),
        )
        runner = RunnerProc(
            cp.url,
            token,
            work / "runner",
            docker_host,
            image,
            repository,
            name=f"gf-bench-runner-{os.getpid()}",
        )
        runner.start()
        t0 = time.perf_counter()
        runner.wait_ready()
        console.print(f"bench: runner and Triton ready in {time.perf_counter() - t0:.1f} s")
        yield cp, runner
    finally:
        if runner is not None and runner.running():
            runner.terminate()
        if runner is not None:
            client = rig.docker_client(docker_host)
            try:
                for c in client.containers.list(
                    all=True, filters={"label": f"gpufleet.runner={runner.name}"}
                ):
                    c.remove(force=True)
            finally:
                client.close()
        if cp is not None:
            cp.stop()
        stop_engine()


def render(results: list[Result], n: int, poll_s: float) -> None:
    table = Table(
        title=f"add_sub [1,4] FP32, at least {n} requests and {ROW_MIN_S:g} s per row, "
        "same Triton container "
        f"(control plane poll interval {poll_s:g} s)"
    )
    columns = ("store", "path", "concurrency", "p50 ms", "p99 ms", "req/s")
    for col in (
        *columns,
        "p50 over direct ms",
        "req/s vs direct",
        "submit / queue / run p50 ms",
        "CPU ms/req cp / runner / client",
    ):
        table.add_column(col, justify="left" if col in ("path", "store") else "right")
    for r in results:
        base = next(
            (
                d
                for d in results
                if d.path.startswith("direct")
                and d.concurrency == r.concurrency
                and d.path.split()[-1] == ("grpc" if "grpc" in r.path else "http")
            ),
            None,
        )
        is_direct = r.path.startswith("direct")
        table.add_row(
            r.store,
            r.path,
            str(r.concurrency),
            f"{r.p50:.2f}",
            f"{r.p99:.2f}",
            f"{r.throughput:.0f}",
            "" if is_direct or base is None else f"{r.p50 - base.p50:+.2f}",
            "" if is_direct or base is None else f"{r.throughput / base.throughput:.0%}",
            " / ".join(f"{statistics.median(v):.0f}" for v in r.stages.values()),
            " / ".join(f"{v:.2f}" for v in r.cpu_ms_per_job.values()),
        )
    console.print(table)
    console.print(
        "Overhead and throughput ratios compare with the direct row of the same protocol "
        "(HTTP or gRPC) at the same concurrency. job: submit: the submit call, queue: "
        "created → leased, run: leased → completed (job timestamps). CPU ms/req: CPU time "
        "of the control-plane process, of the runner process and of the client (this "
        "process: tritonclient or the SDK) per request (warm-up included)."
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=100, help="requests per row (at least)")
    parser.add_argument(
        "--seconds",
        type=float,
        default=3.0,
        help="each row runs at least this long (a throughput ratio over a tenth of a second "
        "is noise)",
    )
    parser.add_argument("--concurrency", default="1,8,32", help="comma-separated levels")
    parser.add_argument("--docker-host", help="engine to use (default: reachable or private)")
    parser.add_argument(
        "--poll-interval", type=float, default=0.5, help="control plane GPUFLEET_POLL_INTERVAL_S"
    )
    parser.add_argument(
        "--stores", default="sqlite,moto", help="embedded stores to run (sqlite, moto)"
    )
    parser.add_argument(
        "--job-requests", type=int, default=0, help="requests of the job rows (default: same)"
    )
    parser.add_argument(
        "--paths",
        default="direct http,direct grpc,kserve http,kserve grpc,sdk infer,job,job (prefer wait)",
        help="comma-separated rows to run",
    )
    parser.add_argument(
        "--hold", type=float, default=0.0, help="seconds to wait before the runs (profilers)"
    )
    args = parser.parse_args(argv)
    global ROW_MIN_S
    ROW_MIN_S = args.seconds
    levels = [int(c) for c in args.concurrency.split(",")]
    results: list[Result] = []
    counters: dict[str, Any] = {}
    for store in args.stores.split(","):
        with tempfile.TemporaryDirectory(prefix="gfb-", dir="/tmp") as tmp:
            grpc_port = rig.free_port()
            with fleet_stack(Path(tmp), args.docker_host, args.poll_interval, store, grpc_port) as (
                cp,
                runner,
            ):
                runner_id = runner.status()["runner_id"]
                configure_runner(cp, runner_id, max(levels))
                deadline = time.monotonic() + 30
                while runner.status()["config"]["max_concurrency"] != max(levels):
                    if time.monotonic() > deadline:
                        raise SystemExit("bench: the runner did not take its new config")
                    time.sleep(0.2)
                while not runner.status().get("dispatch", {}).get("connected"):
                    if time.monotonic() > deadline:
                        raise SystemExit("bench: the runner's dispatch channel did not open")
                    time.sleep(0.2)
                token = access_token(cp)
                cp_host = cp.url.split("://", 1)[1]
                # the bench process itself is the client of every row
                pids = {"control plane": cp.proc.pid, "runner": runner.pid, "client": os.getpid()}
                n_jobs = args.job_requests or args.requests
                for c in levels:
                    console.print(f"bench: {store}, concurrency {c} ...")
                    http_direct = f"127.0.0.1:{runner.http_port}"
                    grpc_direct = f"127.0.0.1:{runner.grpc_port}"
                    grpc_cp = f"127.0.0.1:{grpc_port}"
                    n = args.requests
                    runs: list[tuple[str, Callable[[], Coroutine[Any, Any, Result]], int]] = [
                        (
                            "direct http",
                            partial(bench_kserve_http, http_direct, n, c, None, "direct http"),
                            0,
                        ),
                        (
                            "direct grpc",
                            partial(bench_kserve_grpc, grpc_direct, n, c, None, "direct grpc"),
                            0,
                        ),
                        (
                            "kserve http",
                            partial(bench_kserve_http, cp_host, n, c, token, "kserve http"),
                            n,
                        ),
                        (
                            "kserve grpc",
                            partial(bench_kserve_grpc, grpc_cp, n, c, token, "kserve grpc"),
                            n,
                        ),
                        ("sdk infer", partial(bench_sdk_infer, cp.url, cp.admin_key, n, c), n),
                        ("job", partial(bench_fleet, cp.url, cp.admin_key, n_jobs, c), n_jobs),
                        (
                            "job (prefer wait)",
                            partial(bench_fleet, cp.url, cp.admin_key, n_jobs, c, True),
                            n_jobs,
                        ),
                    ]
                    if args.hold:
                        console.print(f"bench: control plane pid {cp.proc.pid}, runner pid "
                                      f"{runner.pid}; holding {args.hold:g} s")  # fmt: skip
                        time.sleep(args.hold)
                    wanted = set(args.paths.split(","))
                    for name, run, count in runs:
                        fleet_row = count > 0
                        if name not in wanted:
                            continue
                        before = {k: cpu_seconds(pid) for k, pid in pids.items()}
                        res = asyncio.run(run())
                        res.store = store if fleet_row else ""
                        total = len(res.latencies_ms) + min(count or n, 20)  # and the warm-up
                        res.cpu_ms_per_job = {
                            k: (cpu_seconds(pid) - before[k]) * 1000 / total
                            for k, pid in pids.items()
                            if fleet_row or k == "client"
                        }
                        if fleet_row or store == args.stores.split(",")[0]:
                            results.append(res)
                counters[store] = runner.status()["counters"]
    render(results, args.requests, args.poll_interval)
    console.print(f"runner counters: {counters}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
