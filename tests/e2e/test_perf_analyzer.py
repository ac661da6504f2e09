"""Triton's perf_analyzer (2.51, scripts/install-perf-analyzer.sh) against the control plane.

An embedded control plane process and a ``gpufleet-runner start`` process (docker backend,
the CPU Triton image serving ``add_sub``) on loopback, as in tests/e2e/test_fleet_docker.py.
perf_analyzer then drives the control plane's KServe v2 HTTP endpoint with a bearer token
(``-H authorization:Bearer …``) at concurrency 2 for a fixed number of requests, validating
every answer against expected outputs (``validation_data``); it must exit 0 and report no
error. Everything is stopped by pid and the Triton container removed at the end.

Skips only where perf_analyzer cannot exist: the tritonclient wheel ships it for Linux
x86_64 only (the install script exits 2 elsewhere). Any other install failure is a failure.
"""

from __future__ import annotations

import csv
import json
import platform
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from gpufleet import Client

from runner.backends.container_spec import LABEL_RUNNER
from tests import rig
from tests.helpers.procs import ControlPlaneProc, RunnerProc, start_control_plane

pytestmark = [pytest.mark.docker, pytest.mark.slow, pytest.mark.timeout(600)]

MODEL = "add_sub"
INSTALL_SCRIPT = rig.SCRIPTS / "install-perf-analyzer.sh"
CONCURRENCY = 2
REQUESTS = 60


@pytest.fixture(scope="module")
def perf_analyzer() -> Path:
    """The perf_analyzer wrapper, installed (idempotent) when missing."""
    if sys.platform != "linux" or platform.machine() != "x86_64":
        pytest.skip("perf_analyzer ships in the tritonclient wheel for Linux x86_64 only")
    proc = subprocess.run(
        ["bash", str(INSTALL_SCRIPT)], capture_output=True, text=True, timeout=900, check=False
    )
    if proc.returncode == 2:
        pytest.skip(f"no perf_analyzer for this platform: {proc.stderr.strip()[-300:]}")
    assert proc.returncode == 0, f"install-perf-analyzer.sh failed:\n{proc.stderr[-4000:]}"
    return Path(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def fleet(
    docker_host: str,
    triton_image: str,
    model_repository: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[ControlPlaneProc, RunnerProc, int]]:
    """A control plane (with its gRPC port) and one runner (docker backend), add_sub READY."""
    work = tmp_path_factory.mktemp("perf-analyzer")
    grpc_port = rig.free_port()  # the control plane's KServe gRPC listener
    cp = start_control_plane(work / "cp", {"GPUFLEET_GRPC_PORT": str(grpc_port)})
    runner: RunnerProc | None = None
    try:
        with Client(cp.url, api_key=cp.admin_key, timeout=30.0) as client:
            client.models.push(model_repository / MODEL)
            join = client.admin.create_join_token(region="default").join_token
        repository = work / "models"  # add_sub alone: nothing else loads in this Triton
        shutil.copytree(
            model_repository / MODEL,
            repository / MODEL,
            ignore=shutil.ignore_patterns("__pycache__"),
        )
        runner = RunnerProc(cp.url, join, work / "runner", docker_host, triton_image, repository)
        runner.start()
        runner.wait_ready()
        yield cp, runner, grpc_port
    finally:
        if runner is not None and runner.running():
            runner.terminate()
        if runner is not None:
            client_ = rig.docker_client(docker_host)
            try:
                for c in client_.containers.list(
                    all=True, filters={"label": f"{LABEL_RUNNER}={runner.name}"}
                ):
                    c.remove(force=True)
            finally:
                client_.close()
        cp.stop()


def _input_data(path: Path) -> Path:
    """perf_analyzer --input-data: two add_sub cases with the outputs it must check."""
    cases: list[tuple[list[float], list[float]]] = [
        ([1.0, 2.0, 3.0, 4.0], [0.5, 0.25, -1.0, 8.0]),
        ([-3.0, 0.0, 7.5, 2.0], [1.0, 1.0, 1.0, 1.0]),
    ]
    data: dict[str, Any] = {
        "data": [{"INPUT0": a, "INPUT1": b} for a, b in cases],
        "validation_data": [
            {
                "OUTPUT0": [x + y for x, y in zip(a, b, strict=True)],
                "OUTPUT1": [x - y for x, y in zip(a, b, strict=True)],
            }
            for a, b in cases
        ],
    }
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_perf_analyzer_against_the_control_plane(
    perf_analyzer: Path,
    fleet: tuple[ControlPlaneProc, RunnerProc, int],
    tmp_path: Path,
    protocol: str,
) -> None:
    """HTTP: /v2 with the bearer header; gRPC: the KServe gRPC port, the token as metadata
    (perf_analyzer sends -H headers as gRPC metadata; the name must be lower case)."""
    cp, runner, grpc_port = fleet
    url = cp.url.removeprefix("http://") if protocol == "http" else f"127.0.0.1:{grpc_port}"
    token = httpx.post(f"{cp.url}/v1/auth/token", json={"api_key": cp.admin_key}, timeout=15)
    assert token.status_code == 200, token.text
    report = tmp_path / "report.csv"
    cmd = [
        str(perf_analyzer),
        *("-m", MODEL, "-u", url, "-i", protocol, "-b", "1"),
        *("--concurrency-range", f"{CONCURRENCY}:{CONCURRENCY}"),
        *("--request-count", str(REQUESTS)),
        *("--input-data", str(_input_data(tmp_path / "input.json"))),
        *("-H", f"authorization:Bearer {token.json()['access_token']}"),
        *("-f", str(report)),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"perf_analyzer exited {proc.returncode}:\n{output[-4000:]}"
    lowered = output.lower()
    assert "error" not in lowered and "failed" not in lowered, output[-4000:]
    with report.open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 1, rows
    assert int(rows[0]["Concurrency"]) == CONCURRENCY
    assert float(rows[0]["Inferences/Second"]) > 0, rows
    assert runner.running(), runner.log_tail()
