"""Per-job logs with real Triton (docker backend, CPU image): a model that prints while it
runs a job; ``gpufleet jobs logs ID`` (the CLI as a process) shows the runner's lines about
the job and what the model printed during it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from tests import rig
from tests.e2e.test_first_hour import ADD_SUB, gpufleet
from tests.e2e.test_fleet_docker import remove_containers
from tests.helpers.procs import RunnerProc, start_control_plane

PRINT = '        print(f"chatty: {len(requests)} request(s) in this batch", flush=True)\n'


def chatty_model(dest: Path) -> Path:
    """add_sub under the name ``chatty``, printing from ``execute``."""
    model = dest / "chatty"
    shutil.copytree(ADD_SUB, model, ignore=shutil.ignore_patterns("__pycache__"))
    cfg = model / "config.pbtxt"
    cfg.write_text(cfg.read_text().replace('"add_sub"', '"chatty"'))
    code = model / "1" / "model.py"
    lines = code.read_text().splitlines(keepends=True)
    at = next(i for i, line in enumerate(lines) if "def execute(self, requests)" in line)
    lines.insert(at + 1, PRINT)
    code.write_text("".join(lines))
    return model


def test_jobs_logs_show_the_runner_and_the_model(
    docker_host: str, triton_image: str, tmp_path: Path
) -> None:
    cp = start_control_plane(tmp_path / "cp", port=rig.free_port())
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
        model = chatty_model(tmp_path / "src")
        assert gpufleet(config, "models", "push", str(model)).returncode == 0
        r = gpufleet(
            config, "infer", "chatty", "-i", "INPUT0=[[1,2,3,4]]", "-i", "INPUT1=[[1,1,1,1]]",
            "-o", "json", "--timeout", "240", timeout=300,
        )  # fmt: skip
        assert r.returncode == 0, f"{r.stderr}\n{runner.log_tail()}"
        listed = json.loads(gpufleet(config, "-o", "json", "jobs", "list").stdout)["jobs"]
        job = listed[0]
        assert job["status"] == "SUCCEEDED" and job["cold_start"] is True, job
        assert job["load_ms"] > 0 and job["runner_ms"] is not None, job

        logs = gpufleet(config, "jobs", "logs", job["id"])
        assert logs.returncode == 0, logs.stderr
        text = logs.stdout
        assert f"job {job['id']} started" in text and "runner | " in text, text
        assert "model  | " in text and "chatty: 1 request(s) in this batch" in text, text
        as_json = json.loads(gpufleet(config, "-o", "json", "jobs", "logs", job["id"]).stdout)
        assert as_json["logs"] == text and as_json["status"] == "SUCCEEDED"
    finally:
        if runner is not None and runner.running():
            runner.terminate()
        cp.stop()
        if runner is not None:
            remove_containers(docker_host, runner.name)
