"""Direct-mode benchmark: a runner's own endpoint vs the control plane vs Triton itself.

One Triton container (CPU image, ``add_sub``) started by a real runner process (docker
backend, ``direct_url`` set) against a real embedded control plane process, all on
loopback. The same requests (add_sub [1,4] FP32, JSON tensors, every answer checked with
numpy) go, at each concurrency:

  triton             tritonclient.http (aio) straight to Triton's HTTP port (the floor)
  direct tritonclient tritonclient.http (aio) to the runner's direct endpoint, ticket header
  direct sdk         the SDK's ``AsyncClient.infer(..., direct=True)`` (tickets cached)
  cp kserve          tritonclient.http (aio) to the control plane's /v2 (bearer token)
  cp sdk             the SDK's ``AsyncClient.infer(...)`` through the control plane

and the table shows p50/p99 latency, req/s and the p50 over Triton's.

    .venv/bin/python bench/bench_direct.py [--requests 100] [--concurrency 1,8,32]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "sdk"), str(ROOT / "bench")]

from bench_runner import (  # noqa: E402
    MODEL,
    Result,
    _case,
    _check,
    _drive,
    access_token,
    bench_kserve_http,
    bench_sdk_infer,
    configure_runner,
)
from gpufleet import Client  # noqa: E402
from gpufleet.aio import AsyncClient  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from tests import rig  # noqa: E402
from tests.helpers.procs import ControlPlaneProc, RunnerProc, start_control_plane  # noqa: E402

console = Console(width=140)


async def bench_sdk_direct(url: str, api_key: str, n: int, concurrency: int) -> Result:
    async with AsyncClient(url, api_key=api_key, timeout=60.0) as fleet:

        async def one(rng: np.random.Generator) -> None:
            a, b = _case(rng)
            out = await fleet.infer(MODEL, {"INPUT0": a, "INPUT1": b}, timeout=60, direct=True)
            _check(a, b, out["OUTPUT0"], out["OUTPUT1"])

        await _drive(min(n, 20), concurrency, one)  # warm-up (and the ticket)
        latencies, wall = await _drive(n, concurrency, one)
        if fleet.direct_tickets.fallbacks:
            raise SystemExit(f"bench: {fleet.direct_tickets.fallbacks} calls fell back")
    return Result("", "direct sdk", concurrency, latencies, wall)


def ticket(cp: ControlPlaneProc) -> dict[str, str]:
    token = access_token(cp)
    r = httpx.post(
        f"{cp.url}/v1/models/{MODEL}/direct",
        json={},
        headers={"Authorization": f"Bearer {token}"},
        timeout=15,
    )
    r.raise_for_status()
    return dict(r.json())


@contextlib.contextmanager
def stack(work: Path, docker_host: str | None) -> Iterator[tuple[ControlPlaneProc, RunnerProc]]:
    stop_engine: Callable[[], None] = lambda: None  # noqa: E731
    if docker_host is None:
        docker_host, stop_engine = rig.ensure_docker_engine(work / "engine")
    cp: ControlPlaneProc | None = None
    runner: RunnerProc | None = None
    try:
        image = rig.ensure_triton_image(docker_host)
        cp = start_control_plane(work / "cp", {"GPUFLEET_POLL_INTERVAL_S": "0.2"})
        with Client(cp.url, api_key=cp.admin_key, timeout=30.0) as client:
            client.models.push(rig.MODEL_REPOSITORY / MODEL)
            join = client.admin.create_join_token(region="default").join_token
        repository = work / "models"
        shutil.copytree(
            rig.MODEL_REPOSITORY / MODEL,
            repository / MODEL,
            ignore=shutil.ignore_patterns("__pycache__"),
        )
        port = rig.free_port()
        runner = RunnerProc(
            cp.url,
            join,
            work / "runner",
            docker_host,
            image,
            repository,
            name="gf-bench-direct",
            extra_env={
                "GPUFLEET_RUNNER_DIRECT_URL": f"http://127.0.0.1:{port}",
                "GPUFLEET_RUNNER_DIRECT_HOST": "127.0.0.1",
                "GPUFLEET_RUNNER_DIRECT_PORT": str(port),
            },
        )
        runner.start()
        runner.wait_ready()
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


def render(results: list[Result], n: int) -> None:
    table = Table(title=f"add_sub [1,4] FP32, JSON tensors, {n} requests per row, one Triton")
    for col in ("path", "concurrency", "p50 ms", "p99 ms", "req/s", "p50 over triton ms"):
        table.add_column(col, justify="left" if col == "path" else "right")
    for r in results:
        base = next(d for d in results if d.path == "triton" and d.concurrency == r.concurrency)
        table.add_row(
            r.path,
            str(r.concurrency),
            f"{r.p50:.2f}",
            f"{r.p99:.2f}",
            f"{r.throughput:.0f}",
            "" if r is base else f"{r.p50 - base.p50:+.2f}",
        )
    console.print(table)


async def run(cp: ControlPlaneProc, runner: RunnerProc, n: int, levels: list[int]) -> list[Result]:
    status = runner.status()
    configure_runner(cp, status["runner_id"], max(levels) * 2)
    token = access_token(cp)
    t = ticket(cp)
    direct_host = t["url"].removeprefix("http://")
    cp_host = cp.url.removeprefix("http://")
    results: list[Result] = []
    for c in levels:
        rows = [
            await bench_kserve_http(f"127.0.0.1:{runner.http_port}", n, c, None, "triton"),
            await bench_kserve_http(direct_host, n, c, t["ticket"], "direct tritonclient"),
            await bench_sdk_direct(cp.url, cp.admin_key, n, c),
            await bench_kserve_http(cp_host, n, c, token, "cp kserve"),
            await bench_sdk_infer(cp.url, cp.admin_key, n, c),
        ]
        rows[-1].path = "cp sdk"
        results.extend(rows)
        console.print(f"bench: concurrency {c} done")
    return results


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=100)
    ap.add_argument("--concurrency", default="1,8,32")
    ap.add_argument("--docker-host", default=None)
    args = ap.parse_args(argv)
    levels = [int(x) for x in args.concurrency.split(",") if x]
    with tempfile.TemporaryDirectory(prefix="gf-bench-direct-") as tmp:
        t0 = time.perf_counter()
        with stack(Path(tmp), args.docker_host) as (cp, runner):
            console.print(f"bench: stack ready in {time.perf_counter() - t0:.1f} s")
            results = asyncio.run(run(cp, runner, args.requests, levels))
    render(results, args.requests)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
