"""The runner (mock backend) against the real control plane, embedded, over real HTTP:
registration, add_sub uploaded through the API, jobs submitted over HTTP and completed by
the runner, `gpufleet-runner set` applied through the heartbeat, re-registration after a
revocation, and the CLI daemon's status port and clean SIGTERM exit."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from runner.backends.mock_backend import MockBackend
from runner.cli import app
from runner.daemon import Daemon
from runner.gpu import GpuReader
from runner.settings import RunnerSettings
from tests.helpers.procs import start_control_plane

ROOT = Path(__file__).resolve().parents[2]
REPO = ROOT / "model_repository"
PYTHON = sys.executable

pytestmark = pytest.mark.slow


class ControlPlane:
    def __init__(self, url: str, admin_key: str) -> None:
        self.url = url
        self.admin_key = admin_key
        self.http = httpx.Client(base_url=url, timeout=30)
        token = self.http.post("/v1/auth/token", json={"api_key": admin_key})
        token.raise_for_status()
        self.http.headers["Authorization"] = f"Bearer {token.json()['access_token']}"

    def join_token(self) -> str:
        # Several uses: a revoked runner registers again with it (test below).
        resp = self.http.post("/v1/admin/join-tokens", json={"region": "default", "max_uses": 5})
        resp.raise_for_status()
        return str(resp.json()["join_token"])

    def upload_model(self, model_dir: Path) -> None:
        files = [p for p in sorted(model_dir.rglob("*")) if p.is_file() and p.name != "README.md"]
        specs = [
            {
                "path": str(p.relative_to(model_dir)),
                "size": p.stat().st_size,
                "sha256": hashlib.sha256(p.read_bytes()).hexdigest(),
            }
            for p in files
        ]
        name = model_dir.name
        resp = self.http.post(f"/v1/models/{name}/versions", json={"version": "1", "files": specs})
        assert resp.status_code == 201, resp.text
        for up in resp.json()["uploads"]:
            body = (model_dir / up["path"]).read_bytes()
            put = httpx.put(up["url"], content=body, headers=up.get("headers") or {}, timeout=30)
            assert put.status_code in (200, 204), put.text
        resp = self.http.post(f"/v1/models/{name}/versions/1/commit", json={})
        assert resp.status_code == 200, resp.text
        assert resp.json()["state"] == "READY"

    def submit(self, a: list[float], b: list[float], request_id: str | None = None) -> str:
        resp = self.http.post(
            "/v1/jobs",
            headers={"X-Request-ID": request_id} if request_id else None,
            json={
                "model": "add_sub",
                "inputs": [
                    {"name": "INPUT0", "datatype": "FP32", "shape": [1, 4], "data": a},
                    {"name": "INPUT1", "datatype": "FP32", "shape": [1, 4], "data": b},
                ],
                "timeout_s": 60,
            },
        )
        assert resp.status_code == 202, resp.text
        return str(resp.json()["id"])

    def wait(self, job_id: str, timeout: float = 60) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            job = self.http.get(f"/v1/jobs/{job_id}", params={"wait_s": 5}).json()
            if job["status"] in ("SUCCEEDED", "FAILED", "CANCELLED", "TIMED_OUT"):
                return dict(job)
            assert time.monotonic() < deadline, job
            time.sleep(0.1)

    def runner(self, runner_id: str) -> dict[str, Any]:
        runners = self.http.get("/v1/runners").json()["runners"]
        return next(r for r in runners if r["id"] == runner_id)


@pytest.fixture(scope="module")
def control_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    tmp = tmp_path_factory.mktemp("cp")
    try:
        cp = start_control_plane(tmp, {"GPUFLEET_RUNNER_OFFLINE_AFTER_S": "30"})
    except RuntimeError as exc:
        pytest.fail(str(exc))
    try:
        yield ControlPlane(cp.url, cp.admin_key)
    finally:
        cp.stop()


@pytest.fixture(scope="module")
def add_sub(control_plane: ControlPlane) -> None:
    control_plane.upload_model(REPO / "add_sub")


def _settings(cp: ControlPlane, tmp_path: Path, **extra: Any) -> RunnerSettings:
    return RunnerSettings(
        control_plane_url=cp.url,
        join_token=cp.join_token(),
        name=f"it-{tmp_path.name}"[:60],
        backend="mock",
        model_repository=REPO,
        state_dir=tmp_path / "state",
        status_port=0,
        **extra,
    )


async def test_runner_completes_jobs_and_applies_config(
    control_plane: ControlPlane, add_sub: None, tmp_path: Path
) -> None:
    cp = control_plane
    settings = _settings(cp, tmp_path)
    daemon = Daemon(settings, MockBackend(REPO), gpus=GpuReader())
    run = asyncio.create_task(daemon.run(install_signals=False))
    try:
        ids = [await asyncio.to_thread(cp.submit, [i, 2, 3, 4], [1, 1, 1, 1]) for i in range(10)]
        jobs = [await asyncio.to_thread(cp.wait, job_id) for job_id in ids]
        assert [j["status"] for j in jobs] == ["SUCCEEDED"] * 10
        outputs = {o["name"]: o for o in jobs[0]["outputs"]}
        assert outputs["OUTPUT0"]["shape"] == [1, 4] and outputs["OUTPUT0"]["data"] == [0.0] * 4
        runner_id = daemon.identity.runner_id
        assert runner_id is not None and {j["runner_id"] for j in jobs} == {runner_id}

        # `gpufleet-runner set` → PATCH at the control plane → next heartbeat applies it
        result = await asyncio.to_thread(
            CliRunner().invoke,
            app,
            ["set", "max_concurrency", "3", "--url", cp.url, "--runner-id", runner_id],
            env={"GPUFLEET_API_KEY": cp.admin_key},
        )
        assert result.exit_code == 0, result.output
        result = await asyncio.to_thread(
            CliRunner().invoke,
            app,
            ["set", "lease_wait_s", "1", "--url", cp.url, "--runner-id", runner_id],
            env={"GPUFLEET_API_KEY": cp.admin_key},
        )
        assert result.exit_code == 0, result.output
        async with asyncio.timeout(20):
            while (daemon.state.config.max_concurrency, daemon.state.config.lease_wait_s) != (
                3,
                1.0,
            ):
                await asyncio.sleep(0.1)

        view = await asyncio.to_thread(cp.runner, runner_id)
        assert view["models"][0]["name"] == "add_sub" and view["models"][0]["state"] == "READY"
        assert view["gpus"] == []  # CPU-only host

        # revoked → credentials deleted, registers again, keeps working
        resp = await asyncio.to_thread(cp.http.delete, f"/v1/runners/{runner_id}")
        assert resp.status_code == 200, resp.text
        async with asyncio.timeout(30):
            while daemon.identity.runner_id in (None, runner_id):
                await asyncio.sleep(0.1)
        # A long poll opened just before the revocation may still claim a job for the old
        # id (it is then requeued on lease expiry): let it return (lease_wait_s is 1 s).
        await asyncio.sleep(3)
        creds = json.loads(settings.credentials_file.read_text())
        assert creds["runner_id"] == daemon.identity.runner_id != runner_id
        job_id = await asyncio.to_thread(cp.submit, [1, 2, 3, 4], [1, 1, 1, 1])
        job = await asyncio.to_thread(cp.wait, job_id)
        assert job["status"] == "SUCCEEDED" and job["runner_id"] == daemon.identity.runner_id
    finally:
        daemon.request_stop()
        assert await asyncio.wait_for(run, 30) == 0


def test_cli_daemon_status_and_sigterm(
    control_plane: ControlPlane, add_sub: None, tmp_path: Path
) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {
        **os.environ,
        "GPUFLEET_RUNNER_JOIN_TOKEN": control_plane.join_token(),
        "GPUFLEET_RUNNER_STATE_DIR": str(tmp_path / "state"),
        "GPUFLEET_RUNNER_STATUS_PORT": str(port),
        "GPUFLEET_RUNNER_MODEL_REPOSITORY": str(REPO),
        "XDG_CONFIG_HOME": str(tmp_path / "xdg"),
    }
    proc = subprocess.Popen(
        [
            PYTHON,
            "-m",
            "runner",
            "start",
            "--control-plane-url",
            control_plane.url,
            "--backend",
            "mock",
            "--name",
            "cli-runner",
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        status: dict[str, Any] = {}
        while time.monotonic() < deadline:
            out = subprocess.run(
                [PYTHON, "-m", "runner", "status", "--json", "--port", str(port)],
                cwd=ROOT,
                env=env,
                capture_output=True,
                text=True,
                check=False,
            )
            if out.returncode == 0:
                status = json.loads(out.stdout)
                if status.get("runner_id") and status["models"]:
                    break
            time.sleep(0.3)
        assert status.get("health") == "ok", status
        assert status["models"][0]["state"] == "READY"
        job_id = control_plane.submit([1, 2, 3, 4], [4, 3, 2, 1], request_id="req-follow-me")
        assert control_plane.wait(job_id)["status"] == "SUCCEEDED"
        # the runner's lines about the job came with its result (per-job logs)
        logs = control_plane.http.get(f"/v1/jobs/{job_id}/logs").json()
        assert f"job {job_id} started" in logs["logs"], logs
        assert all(line.startswith("runner | ") for line in logs["logs"].splitlines()), logs
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    output = proc.stdout.read() if proc.stdout else ""
    assert code == 0, output
    assert "MOCK BACKEND" in output
    # JSON lines off a terminal; each job logged at start and end, naming its job and model;
    # no line per heartbeat or lease poll (httpx's request lines are below WARNING)
    assert '"job": "job_' in output and "succeeded: Triton" in output
    assert '"model": "add_sub"' in output and "HTTP Request" not in output
    assert '"runner": "run_' in output  # bound once registered
    # the submit's X-Request-ID travelled with the job: the runner's lines about it carry it
    started = [line for line in output.splitlines() if f"job {job_id} started" in line]
    assert started and '"request_id": "req-follow-me"' in started[0], started
