"""The fleet as a user runs it, as real processes on loopback sockets.

``start_control_plane`` runs ``python -m control_plane serve --embedded --data-dir …`` (or
``--embedded-moto``) and waits for its ready line; ``RunnerProc`` runs ``gpufleet-runner
start`` (docker backend by default) with ``GPUFLEET_RUNNER_*`` settings, reads its local
status port and stops it by its pid. Used by tests/e2e/test_fleet_docker.py and
bench/bench_runner.py.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests import rig

REPO = Path(__file__).resolve().parents[2]
RUNNER_BIN = Path(sys.executable).parent / "gpufleet-runner"
READY_PREFIX = "gpufleet control plane listening on "


def _clean_env(prefix: str) -> dict[str, str]:
    """This process's environment without settings of ``prefix`` (nothing leaks in)."""
    return {k: v for k, v in os.environ.items() if not k.startswith(prefix)}


def stop_pid(proc: subprocess.Popen[Any], timeout: float) -> int:
    """SIGTERM ``proc`` (this pid only), SIGKILL after ``timeout``; its exit code."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
    return int(proc.returncode)


@dataclass
class ControlPlaneProc:
    """One ``python -m control_plane serve --embedded`` process."""

    proc: subprocess.Popen[bytes]
    url: str
    admin_key: str
    log_file: Path

    def stop(self, timeout: float = 20) -> int:
        return stop_pid(self.proc, timeout)

    def log_tail(self, chars: int = 4000) -> str:
        return self.log_file.read_text(errors="replace")[-chars:]


def start_control_plane(
    workdir: Path,
    env: dict[str, str] | None = None,
    timeout: float = 60,
    *,
    store: str = "sqlite",
    port: int = 0,
    extra_args: tuple[str, ...] = (),
) -> ControlPlaneProc:
    """Start an embedded control plane on a loopback port (0 = a free one); ``env``:
    ``GPUFLEET_*`` settings (lease duration, sweep interval, ...). ``store``: ``sqlite``
    (the embedded default, data in ``workdir/data``: a restart on the same workdir finds
    everything again), ``moto`` (``--embedded-moto``) or ``dynamodb`` (the endpoints, table
    prefix and bucket that ``env`` names: a store outside the process)."""
    workdir.mkdir(parents=True, exist_ok=True)
    key_file = workdir / "admin.key"
    log_file = workdir / "control-plane.log"
    full_env = _clean_env("GPUFLEET_")
    full_env.update({"GPUFLEET_POLL_INTERVAL_S": "0.05", "GPUFLEET_SWEEP_INTERVAL_S": "0.5"})
    full_env["GPUFLEET_METRICS_PUBLIC"] = "true"  # the rig scrapes /metrics without a token
    full_env["GPUFLEET_ALLOW_MOCK_RUNNERS"] = "true"  # tests run mock runners (env may say no)
    full_env.update(env or {})
    with log_file.open("wb") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                *("-m", "control_plane", "serve", "--host", "127.0.0.1"),
                *(
                    ("--embedded", "--data-dir", str(workdir / "data"))
                    if store == "sqlite"
                    else ("--embedded-moto",)
                    if store == "moto"
                    else ()  # "dynamodb": the endpoints and tables named in env
                ),
                *("--port", str(port), "--admin-key-file", str(key_file)),
                *extra_args,
            ],
            cwd=REPO,
            env=full_env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in log_file.read_text(errors="replace").splitlines():
            if line.startswith(READY_PREFIX) and key_file.is_file():
                url = line[len(READY_PREFIX) :].strip()
                return ControlPlaneProc(proc, url, key_file.read_text().strip(), log_file)
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    stop_pid(proc, 5)
    raise RuntimeError("control plane did not start:\n" + log_file.read_text(errors="replace"))


@dataclass
class RunnerProc:
    """One ``gpufleet-runner start`` process and the settings it runs with.

    Ports and the state directory are fixed at construction, so :meth:`start` after a stop
    is the same runner (same credentials, same Triton container spec).
    """

    control_plane_url: str
    join_token: str
    workdir: Path
    docker_host: str
    triton_image: str
    model_repository: Path
    backend: str = "docker"
    name: str = field(default_factory=lambda: f"gf-e2e-{uuid.uuid4().hex[:8]}")
    extra_env: dict[str, str] = field(default_factory=dict)
    http_port: int = field(default_factory=rig.free_port)
    grpc_port: int = field(default_factory=rig.free_port)
    metrics_port: int = field(default_factory=rig.free_port)
    status_port: int = field(default_factory=rig.free_port)
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0

    @property
    def state_dir(self) -> Path:
        return self.workdir / "state"

    @property
    def log_file(self) -> Path:
        return self.workdir / "runner.log"

    def env(self) -> dict[str, str]:
        env = _clean_env("GPUFLEET_RUNNER_")
        env.update(
            {
                "XDG_CONFIG_HOME": str(self.workdir / "config"),  # no user runner.yaml
                "GPUFLEET_RUNNER_NAME": self.name,
                "GPUFLEET_RUNNER_STATE_DIR": str(self.state_dir),
                "GPUFLEET_RUNNER_DOCKER_HOST": self.docker_host,
                "GPUFLEET_RUNNER_TRITON_IMAGE": self.triton_image,
                "GPUFLEET_RUNNER_MODEL_REPOSITORY": str(self.model_repository),
                "GPUFLEET_RUNNER_TRITON_HTTP_PORT": str(self.http_port),
                "GPUFLEET_RUNNER_TRITON_GRPC_PORT": str(self.grpc_port),
                "GPUFLEET_RUNNER_TRITON_METRICS_PORT": str(self.metrics_port),
                "GPUFLEET_RUNNER_STATUS_PORT": str(self.status_port),
                "GPUFLEET_RUNNER_SHM_SIZE": "256m",
                "GPUFLEET_RUNNER_TRITON_EXIT_TIMEOUT_S": "2",
                "GPUFLEET_RUNNER_RESTART_BACKOFF_INITIAL_S": "0.5",
                "GPUFLEET_RUNNER_LEASE_GRACE_S": "10",
            }
        )
        env.update(self.extra_env)
        return env

    def start(self) -> None:
        assert self.proc is None or self.proc.poll() is not None, "already running"
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.starts += 1
        with self.log_file.open("ab") as out:
            out.write(f"\n===== start #{self.starts} =====\n".encode())
            out.flush()
            self.proc = subprocess.Popen(
                [
                    str(RUNNER_BIN),
                    *("start", "--control-plane-url", self.control_plane_url),
                    *("--join-token", self.join_token, "--backend", self.backend),
                ],
                cwd=REPO,
                env=self.env(),
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def terminate(self, timeout: float = 60) -> int:
        """SIGTERM (drain) and wait; SIGKILL after ``timeout``."""
        assert self.proc is not None
        return stop_pid(self.proc, timeout)

    def kill(self) -> None:
        """SIGKILL this runner's pid: no drain, no cleanup."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(timeout=10)

    def status(self) -> dict[str, Any]:
        """The daemon's local status (``gpufleet-runner status --json``)."""
        _, body = rig.http_get(f"http://127.0.0.1:{self.status_port}/status", timeout=5)
        return dict(json.loads(body))

    def wait_ready(self, timeout: float = 180, model: str = "add_sub") -> dict[str, Any]:
        """Until registered, heart-beating, Triton ready and ``model`` READY; the status."""
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            if not self.running():
                raise RuntimeError(f"runner {self.name} exited:\n{self.log_tail()}")
            with contextlib.suppress(urllib.error.URLError, OSError, ValueError):
                last = self.status()
                models = {m["name"]: m["state"] for m in last.get("models", [])}
                if (
                    last.get("runner_id")
                    and last.get("last_heartbeat_at")
                    and last["triton"].get("ready")
                    and models.get(model) == "READY"
                ):
                    return last
            time.sleep(0.25)
        raise RuntimeError(f"runner {self.name} not ready: {last}\n{self.log_tail()}")

    def log_tail(self, chars: int = 6000) -> str:
        try:
            return self.log_file.read_text(errors="replace")[-chars:]
        except OSError:
            return "<no log>"
