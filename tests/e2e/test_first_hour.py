"""The first hour, as a new user follows README: an embedded control plane, a runner with
an empty model repository (real Docker, CPU Triton), then the CLI as a process: login, push,
infer WITHOUT deploying (the implicit deployment cold-starts it), push again (the same
version), restart the control plane, list jobs and models, the job's logs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests import rig
from tests.e2e.test_fleet_docker import remove_containers
from tests.helpers.procs import RunnerProc, start_control_plane

ROOT = Path(__file__).resolve().parents[2]
ADD_SUB = ROOT / "model_repository" / "add_sub"


def gpufleet(config: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GPUFLEET_")}
    env.update({"GPUFLEET_CONFIG_DIR": str(config), "COLUMNS": "80"})
    return subprocess.run(
        [sys.executable, "-m", "gpufleet.cli", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_push_then_infer_without_deploy(
    docker_host: str, triton_image: str, tmp_path: Path
) -> None:
    port = rig.free_port()
    cp = start_control_plane(tmp_path / "cp", port=port)
    config = tmp_path / "config"
    empty_repo = tmp_path / "models"
    empty_repo.mkdir()
    runner: RunnerProc | None = None
    try:
        assert gpufleet(config, "login", "--url", cp.url, "--api-key", cp.admin_key).returncode == 0
        token = json.loads(gpufleet(config, "-o", "json", "admin", "join-token").stdout)
        runner = RunnerProc(
            cp.url, token["join_token"], tmp_path / "runner", docker_host, triton_image, empty_repo
        )
        runner.start()

        pushed = gpufleet(config, "models", "push", str(ADD_SUB), "-o", "json")
        assert pushed.returncode == 0, pushed.stderr
        assert json.loads(pushed.stdout)["version"] == "1"
        r = gpufleet(
            config, "infer", "add_sub", "-i", "INPUT0=[[1,2,3,4]]", "-i", "INPUT1=[[1,1,1,1]]",
            "-o", "json", "--timeout", "240", timeout=300,
        )  # fmt: skip
        assert r.returncode == 0, f"{r.stderr}\n{runner.log_tail()}"
        outputs = json.loads(r.stdout)["outputs"]
        assert outputs["OUTPUT0"]["data"] == [2.0, 3.0, 4.0, 5.0]

        again = gpufleet(config, "models", "push", str(ADD_SUB), "-o", "json")
        assert again.returncode == 0 and json.loads(again.stdout)["version"] == "1"

        cp.stop()
        cp = start_control_plane(tmp_path / "cp", port=port)  # same data, same address
        listed = gpufleet(config, "-o", "json", "jobs", "list")
        assert listed.returncode == 0, listed.stderr
        jobs = json.loads(listed.stdout)["jobs"]
        assert [j["status"] for j in jobs] == ["SUCCEEDED"]
        assert jobs[0]["cold_start"] is True  # it waited for the implicit deployment's load
        logs = gpufleet(config, "jobs", "logs", jobs[0]["id"])  # kept with the job
        assert logs.returncode == 0 and f"job {jobs[0]['id']} started" in logs.stdout, logs
        models = gpufleet(config, "models", "list")
        assert models.returncode == 0 and "1:READY" in models.stdout
        r = gpufleet(config, "-o", "json", "models", "deployment", "add_sub")
        assert json.loads(r.stdout)["implicit"] is True
    finally:
        if runner is not None and runner.running():
            runner.terminate()
        cp.stop()
        if runner is not None:
            remove_containers(docker_host, runner.name)
