"""Triton's own load generator, perf_analyzer, against Triton directly and through the fleet.

One Triton container (CPU image, ``add_sub``), started by a real runner process (docker
backend) against a real embedded control plane process, both on loopback, as in
bench/bench_runner.py. perf_analyzer (tritonclient 2.51.0's binary, installed apart by
scripts/install-perf-analyzer.sh) then drives, at each concurrency:

  direct http   Triton's HTTP port                    fleet http   the control plane's /v2
  direct grpc   Triton's gRPC port                    fleet grpc   the control plane's gRPC port

with input shape [1, 4] FP32 (add_sub: INPUT0/INPUT1 dims [4], batch 1). Fleet calls carry
the bearer token with ``-H authorization:Bearer <token>``: perf_analyzer 2.51's help says -H
is "ignored for GRPC requests", but it does send the headers as gRPC metadata (checked
against a probe server); the key must be lower case there (gRPC aborts the process on
``Authorization``). 2.51 has no separate gRPC-header option.

The control plane is started with ``GPUFLEET_GRPC_PORT`` (a free port, or --fleet-grpc-port);
the port it reports (``gpufleet KServe gRPC listening on H:P``), else that one, must answer a
bearer-authenticated ServerLive, otherwise the fleet grpc rows are skipped with the reason.
Everything is stopped by pid at the end.

    .venv/bin/python bench/bench_perf_analyzer.py [--concurrency 1,8,32] [--measurement-ms 2000]
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "sdk")]

from bench_runner import configure_runner  # noqa: E402
from bench_runner import fleet_stack as runner_stack  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from tests import rig  # noqa: E402
from tests.helpers.procs import ControlPlaneProc, RunnerProc  # noqa: E402

MODEL = "add_sub"
INSTALL_SCRIPT = ROOT / "scripts" / "install-perf-analyzer.sh"
PATHS = ("direct http", "fleet http", "direct grpc", "fleet grpc")
GRPC_REPORT = re.compile(r"grpc\S*\s.*?listening on \S*?:(\d+)", re.IGNORECASE)
console = Console(width=140)


def install_perf_analyzer() -> Path:
    """The perf_analyzer wrapper (scripts/install-perf-analyzer.sh; idempotent)."""
    proc = subprocess.run(
        ["bash", str(INSTALL_SCRIPT)], capture_output=True, text=True, check=False, timeout=900
    )
    if proc.returncode != 0:
        raise SystemExit(f"bench: cannot install perf_analyzer:\n{proc.stderr[-4000:]}")
    return Path(proc.stdout.strip().splitlines()[-1])


@dataclass
class Row:
    path: str
    concurrency: int
    throughput: float = 0.0  # infer/s
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    window_ms: int = 0  # the measurement interval that gave a stable measurement
    skipped: str = ""  # why there is no measurement


def perf_analyzer(
    binary: Path,
    url: str,
    protocol: str,
    concurrency: int,
    measurement_ms: int,
    stability: int,
    token: str | None,
    out_csv: Path,
) -> subprocess.CompletedProcess[str]:
    """One perf_analyzer run at one concurrency; its CSV report goes to ``out_csv``."""
    cmd = [
        str(binary),
        *("-m", MODEL, "-u", url, "-i", protocol, "-b", "1"),
        *("--shape", "INPUT0:4", "--shape", "INPUT1:4"),
        *("--concurrency-range", f"{concurrency}:{concurrency}"),
        *("--measurement-interval", str(measurement_ms), "--max-trials", "10"),
        *("--stability-percentage", str(stability)),
        *("-f", str(out_csv)),
    ]
    if token is not None:  # lower case: gRPC metadata keys must be (HTTP does not care)
        cmd += ["-H", f"authorization:Bearer {token}"]
    timeout = measurement_ms * 14 / 1000 + 120
    try:
        return subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=timeout)
    except subprocess.TimeoutExpired as exc:  # run() killed it; the row says why
        text = exc.stdout.decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        return subprocess.CompletedProcess(
            cmd, -1, text, f"no stable measurement within {timeout:.0f} s (killed)"
        )


def parse_report(out_csv: Path) -> tuple[float, float, float]:
    """(infer/s, p50 ms, p99 ms) of the single concurrency level in a perf_analyzer CSV."""
    with out_csv.open(newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise ValueError(f"no measurement in {out_csv}")
    row = rows[0]
    return (
        float(row["Inferences/Second"]),
        float(row["p50 latency"]) / 1000,
        float(row["p99 latency"]) / 1000,
    )


def access_token(cp: ControlPlaneProc) -> str:
    with httpx.Client(base_url=cp.url, timeout=15) as http:
        resp = http.post("/v1/auth/token", json={"api_key": cp.admin_key})
        resp.raise_for_status()
        return str(resp.json()["access_token"])


def fleet_grpc_port(cp: ControlPlaneProc, requested: int, token: str) -> tuple[int | None, str]:
    """The control plane's gRPC port if it serves one (its log line, else the requested port
    answering ServerLive with the bearer token); else (None, why)."""
    import tritonclient.grpc as grpcclient

    reported = GRPC_REPORT.search(cp.log_tail(20000))
    port = int(reported.group(1)) if reported else requested
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{port}")
    try:
        live = client.is_server_live(headers={"authorization": f"Bearer {token}"}, client_timeout=5)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return None, (
            f"the control plane reported no gRPC port and 127.0.0.1:{port} "
            f"(GPUFLEET_GRPC_PORT) does not serve KServe gRPC: {first[:120]}"
        )
    finally:
        client.close()
    if not live:
        return None, f"the control plane's gRPC port {port} says not live"
    return port, ""


def fleet_stack(
    work: Path, docker_host: str | None, poll_s: float, grpc_port: int
) -> contextlib.AbstractContextManager[tuple[ControlPlaneProc, RunnerProc]]:
    """bench_runner's stack (embedded SQLite control plane with its gRPC port, one runner),
    with hour-long access tokens (a perf_analyzer run outlives the default 15 min)."""
    return runner_stack(
        work, docker_host, poll_s, "sqlite", grpc_port, {"GPUFLEET_ACCESS_TOKEN_TTL_S": "3600"}
    )


def render(rows: list[Row], measurement_ms: int, stability: int) -> None:
    table = Table(
        title=f"perf_analyzer 2.51, add_sub [1,4] FP32, measurement interval {measurement_ms} ms, "
        f"stability {stability}%, same Triton container"
    )
    for col in ("path", "concurrency", "infer/s", "p50 ms", "p99 ms", "window ms", "fleet/direct"):
        table.add_column(col, justify="left" if col == "path" else "right")
    direct = {(r.path.split()[1], r.concurrency): r for r in rows if r.path.startswith("direct")}
    for r in rows:
        if r.skipped:
            table.add_row(
                r.path, str(r.concurrency), "-", "-", "-", "-", f"skipped: {r.skipped[:55]}"
            )
            continue
        ratio = ""
        base = direct.get((r.path.split()[1], r.concurrency))
        if r.path.startswith("fleet") and base is not None and not base.skipped:
            ratio = (
                f"{r.throughput / base.throughput:.2f}x infer/s, {r.p50_ms / base.p50_ms:.1f}x p50"
            )
        table.add_row(
            r.path,
            str(r.concurrency),
            f"{r.throughput:.0f}",
            f"{r.p50_ms:.2f}",
            f"{r.p99_ms:.2f}",
            str(r.window_ms),
            ratio,
        )
    console.print(table)
    console.print(
        "direct: perf_analyzer to the Triton container's own ports; fleet: to the control "
        "plane (bearer token), dispatched in memory: control plane -> runner channel -> "
        "Triton -> answer on the same call (no job written)"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--concurrency", default="1,8,32", help="comma-separated levels")
    parser.add_argument(
        "--measurement-ms", type=int, default=2000, help="perf_analyzer --measurement-interval"
    )
    parser.add_argument(
        "--stability",
        type=int,
        default=50,
        help="perf_analyzer --stability-percentage (its default, 10, rarely settles for the fleet "
        "path on a shared CPU machine)",
    )
    parser.add_argument("--docker-host", help="engine to use (default: reachable or private)")
    parser.add_argument(
        "--fleet-grpc-port",
        type=int,
        help="control plane gRPC port (GPUFLEET_GRPC_PORT; default: a free port)",
    )
    parser.add_argument(
        "--poll-interval", type=float, default=0.5, help="control plane GPUFLEET_POLL_INTERVAL_S"
    )
    args = parser.parse_args(argv)
    levels = [int(c) for c in args.concurrency.split(",")]
    binary = install_perf_analyzer()
    console.print(f"bench: {binary}")
    rows: list[Row] = []
    requested_grpc = args.fleet_grpc_port or rig.free_port()
    with (
        tempfile.TemporaryDirectory(prefix="gfpa-", dir="/tmp") as tmp,
        fleet_stack(
            Path(tmp),
            args.docker_host,
            args.poll_interval,
            requested_grpc,
        ) as (cp, runner),
    ):
        configure_runner(cp, runner.status()["runner_id"], max(levels))
        deadline = time.monotonic() + 30
        while runner.status()["config"]["max_concurrency"] != max(levels):
            if time.monotonic() > deadline:
                raise SystemExit("bench: the runner did not take its new config")
            time.sleep(0.2)
        cp_port = int(cp.url.rsplit(":", 1)[1])
        grpc_port, grpc_skip = fleet_grpc_port(cp, requested_grpc, access_token(cp))
        if grpc_port is None:
            console.print(f"bench: fleet grpc skipped: {grpc_skip}")
        targets = {
            "direct http": (runner.http_port, "http", False),
            "fleet http": (cp_port, "http", True),
            "direct grpc": (runner.grpc_port, "grpc", False),
            "fleet grpc": (grpc_port, "grpc", True),
        }
        for path in PATHS:
            port, protocol, fleet = targets[path]
            for c in levels:
                if port is None:
                    rows.append(Row(path, c, skipped=grpc_skip))
                    continue
                console.print(f"bench: {path}, concurrency {c} ...")
                out_csv = Path(tmp) / f"{path.replace(' ', '-')}-{c}.csv"
                token = access_token(cp) if fleet else None
                window = args.measurement_ms
                for attempt in (1, 2):  # an unstable measurement: once more, twice as long
                    proc = perf_analyzer(
                        binary,
                        f"127.0.0.1:{port}",
                        protocol,
                        c,
                        window,
                        args.stability,
                        token,
                        out_csv,
                    )
                    unstable = "stable measurement" in proc.stdout + proc.stderr
                    if proc.returncode == 0 or not unstable or attempt == 2:
                        break
                    window *= 2
                    console.print(f"bench: {path} c={c}: unstable, again with {window} ms")
                if proc.returncode != 0 or not out_csv.is_file():
                    lines = (proc.stdout + proc.stderr).strip().splitlines()
                    lines = [re.sub(r"Thread \[\d+\]", "Thread [n]", x) for x in lines if x.strip()]
                    tail = "\n".join(dict.fromkeys(lines))[-1500:]
                    console.print(f"bench: {path} c={c}: perf_analyzer exit {proc.returncode}")
                    console.print(tail, markup=False)
                    errors = [x.split("error:", 1)[1].strip() for x in lines if "error:" in x]
                    why = errors[-1] if errors else "no stable measurement" if unstable else ""
                    rows.append(Row(path, c, skipped=f"exit {proc.returncode}: {why}"[:70]))
                    continue
                rows.append(Row(path, c, *parse_report(out_csv), window_ms=window))
    render(rows, args.measurement_ms, args.stability)
    return 0


if __name__ == "__main__":
    sys.exit(main())
