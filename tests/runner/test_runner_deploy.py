"""The runner container's `docker run` arguments (runner/deploy.py), the script that renders
them (scripts/deploy-runner.sh args), the image's HEALTHCHECK against a real status server,
and the settings names used by Dockerfile.runner and the systemd unit."""

from __future__ import annotations

import asyncio
import os
import re
import socket
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from runner.deploy import (
    CONTAINER_DOCKER_SOCKET,
    JOIN_TOKEN_ENV,
    DeployError,
    RunnerDeployment,
    docker_run_args,
    gpus_flag,
    healthcheck,
    main,
    passthrough_env,
)
from runner.settings import ENV_PREFIX, RunnerSettings
from runner.status_server import StatusServer

ROOT = Path(__file__).resolve().parents[2]
URL = "https://cp.example.test"


def _dep(**kw: Any) -> RunnerDeployment:
    base: dict[str, Any] = {
        "image": "gpufleet/runner:1",
        "control_plane_url": URL,
        "data_dir": "/srv/gpufleet",
        "docker_socket": "/var/run/docker.sock",
        "socket_gid": 998,
    }
    base.update(kw)
    return RunnerDeployment(**base)


def _flags(args: list[str], flag: str) -> list[str]:
    """Every value given to ``flag``."""
    return [args[i + 1] for i, a in enumerate(args[:-1]) if a == flag]


def _env(args: list[str]) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for item in _flags(args, "--env"):
        key, sep, value = item.partition("=")
        out[key] = value if sep else None
    return out


def _settings_env_names() -> set[str]:
    return {ENV_PREFIX + name.upper() for name in RunnerSettings.model_fields}


# --------------------------------------------------------------------------- rendering


def test_default_deployment_renders_a_complete_run() -> None:
    args = docker_run_args(_dep())
    assert args[:2] == ["run", "--detach"]
    assert args[-1] == "gpufleet/runner:1"  # the image last: nothing after it is a command
    assert _flags(args, "--name") == ["gpufleet-runner"]
    assert _flags(args, "--restart") == ["unless-stopped"]
    assert _flags(args, "--network") == ["host"]
    assert _flags(args, "--gpus") == ["all"]
    assert _flags(args, "--group-add") == ["998"]
    assert "--user" not in args  # the image's non-root user
    assert int(_flags(args, "--stop-timeout")[0]) > 30 + 10  # drain + Triton exit timeout
    volumes = _flags(args, "--volume")
    # the data directory at the SAME path on both sides: the runner asks the engine to
    # bind-mount <data>/models into Triton, and the engine resolves that path on the host;
    # one mount, so the download cache (<data>/runner/cache) can hard-link into models/
    assert volumes == [
        f"/var/run/docker.sock:{CONTAINER_DOCKER_SOCKET}",
        "/srv/gpufleet:/srv/gpufleet",
    ]
    env = _env(args)
    assert env == {
        "GPUFLEET_RUNNER_CONTROL_PLANE_URL": URL,
        "GPUFLEET_RUNNER_BACKEND": "docker",
        "GPUFLEET_RUNNER_DOCKER_HOST": f"unix://{CONTAINER_DOCKER_SOCKET}",
        "GPUFLEET_RUNNER_MODEL_REPOSITORY": "/srv/gpufleet/models",
        "GPUFLEET_RUNNER_STATE_DIR": "/srv/gpufleet/runner",
        "GPUFLEET_RUNNER_STATUS_PORT": "8765",
        JOIN_TOKEN_ENV: None,  # by name: docker takes the value from its own environment
    }


def test_every_rendered_variable_is_a_runner_setting() -> None:
    args = docker_run_args(
        _dep(
            runner_name="gpu-07",
            triton_image="nvcr.io/nvidia/tritonserver:24.10-py3",
            extra_env={"GPUFLEET_RUNNER_SHM_SIZE": "2g", "GPUFLEET_RUNNER_REGION": "eu"},
        )
    )
    env = _env(args)
    assert set(env) <= _settings_env_names(), set(env) - _settings_env_names()
    assert env["GPUFLEET_RUNNER_NAME"] == "gpu-07"
    assert env["GPUFLEET_RUNNER_TRITON_IMAGE"] == "nvcr.io/nvidia/tritonserver:24.10-py3"
    assert env["GPUFLEET_RUNNER_SHM_SIZE"] == "2g"
    assert env["GPUFLEET_RUNNER_REGION"] == "eu"


def test_rendered_environment_builds_valid_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """What the container's runner gets parses as RunnerSettings (and lands where meant)."""
    env = _env(docker_run_args(_dep(extra_env={"GPUFLEET_RUNNER_ULIMITS": '{"stack": 1}'})))
    for key in list(os.environ):
        if key.startswith(ENV_PREFIX):
            monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, "gfj_x" if key == JOIN_TOKEN_ENV else str(value))
    s = RunnerSettings()
    assert s.control_plane_url == URL
    assert s.backend == "docker"
    assert str(s.model_repository) == "/srv/gpufleet/models"
    assert s.docker_host == f"unix://{CONTAINER_DOCKER_SOCKET}"
    assert s.state_dir == Path("/srv/gpufleet/runner")
    # the download cache and the repository are under the one mounted directory
    assert s.state_dir.parent == s.model_repository.parent == Path("/srv/gpufleet")
    assert s.ulimits == {"stack": 1}
    assert s.join_token is not None and s.join_token.get_secret_value() == "gfj_x"


def test_no_join_token_when_already_registered() -> None:
    assert JOIN_TOKEN_ENV not in _env(docker_run_args(_dep(pass_join_token=False)))


def test_socket_without_usable_group_runs_as_root() -> None:
    args = docker_run_args(_dep(socket_gid=None))
    assert _flags(args, "--user") == ["0:0"]
    assert "--group-add" not in args


def test_private_socket_path_is_mounted_at_the_standard_path() -> None:
    args = docker_run_args(_dep(docker_socket="/tmp/engine/docker.sock"))
    assert f"/tmp/engine/docker.sock:{CONTAINER_DOCKER_SOCKET}" in _flags(args, "--volume")


@pytest.mark.parametrize(
    ("gpus", "expected"),
    [
        ("all", ["--gpus", "all"]),
        ("none", []),
        ("", []),
        ("2", ["--gpus", "2"]),
        ("0,1", ["--gpus", '"device=0,1"']),
        (" 0, 3 ", ["--gpus", '"device=0,3"']),
        ("device=1", ["--gpus", '"device=1"']),
        ("GPU-3f6a,GPU-77b1", ["--gpus", '"device=GPU-3f6a,GPU-77b1"']),
    ],
)
def test_gpu_selection(gpus: str, expected: list[str]) -> None:
    assert gpus_flag(gpus) == expected
    args = docker_run_args(_dep(gpus=gpus))
    assert _flags(args, "--gpus") == expected[1:]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"data_dir": "data"}, "data directory must be an absolute path"),
        ({"data_dir": "/"}, "cannot be /"),
        ({"docker_socket": "docker.sock"}, "Docker socket must be an absolute path"),
        ({"data_dir": "/srv/a:b"}, "may not contain"),
        ({"control_plane_url": "cp.internal:8080"}, "http(s)://"),
        ({"status_port": 0}, "status port"),
        ({"gpus": ","}, "no GPU"),
        ({"extra_env": {"AWS_SECRET_ACCESS_KEY": "x"}}, "only GPUFLEET_RUNNER_"),
        ({"extra_env": {"GPUFLEET_RUNNER_MODEL_REPOSITORY": "/x"}}, "set by the deployment"),
        ({"extra_env": {JOIN_TOKEN_ENV: "gfj_x"}}, "set by the deployment"),
    ],
)
def test_invalid_deployments_are_refused(change: dict[str, Any], message: str) -> None:
    with pytest.raises(DeployError, match=re.escape(message)):
        docker_run_args(_dep(**change))


def test_passthrough_env_keeps_only_other_runner_settings() -> None:
    environ = {
        "GPUFLEET_RUNNER_SHM_SIZE": "2g",
        "GPUFLEET_RUNNER_JOIN_TOKEN": "secret",
        "GPUFLEET_RUNNER_MODEL_REPOSITORY": "/elsewhere",
        "GPUFLEET_API_KEY": "gf_x",
        "PATH": "/usr/bin",
    }
    assert passthrough_env(environ) == {"GPUFLEET_RUNNER_SHM_SIZE": "2g"}


def test_cli_prints_nul_separated_args(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GPUFLEET_RUNNER_LABELS", '{"rack": "r1"}')
    monkeypatch.setenv("GPUFLEET_RUNNER_JOIN_TOKEN", "must-not-appear")
    code = main(
        [
            "args",
            "--control-plane-url",
            URL,
            "--data-dir",
            "/m/",
            "--socket-gid",
            "0",
            "--gpus",
            "0,1",
            "--env",
            "GPUFLEET_RUNNER_REGION=eu west",
            "--pass-environment",
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert out.endswith("\0")
    args = out[:-1].split("\0")
    assert args == docker_run_args(
        RunnerDeployment(
            image="gpufleet/runner:0.1.0",
            control_plane_url=URL,
            data_dir="/m",
            socket_gid=0,
            gpus="0,1",
            extra_env={
                "GPUFLEET_RUNNER_LABELS": '{"rack": "r1"}',
                "GPUFLEET_RUNNER_REGION": "eu west",
            },
        )
    )
    assert "must-not-appear" not in out


def test_cli_reports_invalid_settings(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["args", "--control-plane-url", URL, "--data-dir", "rel"]) == 2
    assert "absolute path" in capsys.readouterr().err


# --------------------------------------------------------------------------- the script


@pytest.fixture
def fake_socket(tmp_path: Path) -> Iterator[Path]:
    """A listening unix socket standing in for the engine's (the script only stats it)."""
    path = tmp_path / "docker.sock"
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(path))
    s.listen()
    try:
        yield path
    finally:
        s.close()


def _script_args(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("GPUFLEET_RUNNER_")}
    return subprocess.run(
        ["bash", str(ROOT / "scripts" / "deploy-runner.sh"), "args"],
        cwd=ROOT,
        env={**clean, "PYTHON": sys.executable, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_script_renders_group_of_a_group_writable_socket(fake_socket: Path, tmp_path: Path) -> None:
    fake_socket.chmod(0o660)
    proc = _script_args(
        {
            "DOCKER_HOST": f"unix://{fake_socket}",
            "CONTROL_PLANE_URL": URL,
            "JOIN_TOKEN": "gfj_secret",
            "DATA_DIR": str(tmp_path / "data") + "/",
            "GPUS": "1",
            "TRITON_IMAGE": "gpufleet/tritonserver-cpu:2.51",
            "GPUFLEET_RUNNER_SHM_SIZE": "256m",
        }
    )
    assert proc.returncode == 0, proc.stderr
    args = proc.stdout.splitlines()
    assert _flags(args, "--group-add") == [str(fake_socket.stat().st_gid)]
    assert f"{fake_socket}:{CONTAINER_DOCKER_SOCKET}" in _flags(args, "--volume")
    data = str(tmp_path / "data")
    assert f"{data}:{data}" in _flags(args, "--volume")
    assert _env(args)["GPUFLEET_RUNNER_MODEL_REPOSITORY"] == f"{data}/models"
    assert _flags(args, "--gpus") == ["1"]
    env = _env(args)
    assert env["GPUFLEET_RUNNER_SHM_SIZE"] == "256m"
    assert env["GPUFLEET_RUNNER_TRITON_IMAGE"] == "gpufleet/tritonserver-cpu:2.51"
    assert env[JOIN_TOKEN_ENV] is None
    assert "gfj_secret" not in proc.stdout + proc.stderr
    assert args[-1].startswith("gpufleet/runner:")


def test_script_runs_as_root_when_the_socket_group_cannot_use_it(
    fake_socket: Path, tmp_path: Path
) -> None:
    fake_socket.chmod(0o600)
    assert stat.S_IMODE(fake_socket.stat().st_mode) == 0o600
    proc = _script_args(
        {
            "DOCKER_HOST": f"unix://{fake_socket}",
            "CONTROL_PLANE_URL": URL,
            "JOIN_TOKEN": "gfj_x",
            "DATA_DIR": str(tmp_path / "data"),
        }
    )
    assert proc.returncode == 0, proc.stderr
    assert _flags(proc.stdout.splitlines(), "--user") == ["0:0"]
    assert "runs as root" in proc.stderr


def test_script_needs_a_join_token_until_registered(fake_socket: Path, tmp_path: Path) -> None:
    env = {
        "DOCKER_HOST": f"unix://{fake_socket}",
        "CONTROL_PLANE_URL": URL,
        "DATA_DIR": str(tmp_path / "data"),
    }
    proc = _script_args(env)
    assert proc.returncode != 0 and "JOIN_TOKEN is required" in proc.stderr
    (tmp_path / "data" / "runner").mkdir(parents=True)
    (tmp_path / "data" / "runner" / "credentials.json").write_text("{}")
    proc = _script_args(env)
    assert proc.returncode == 0, proc.stderr
    assert JOIN_TOKEN_ENV not in _env(proc.stdout.splitlines())


def test_script_needs_the_control_plane_url(fake_socket: Path) -> None:
    proc = _script_args({"DOCKER_HOST": f"unix://{fake_socket}", "JOIN_TOKEN": "x"})
    assert proc.returncode != 0 and "CONTROL_PLANE_URL is required" in proc.stderr


def test_script_refuses_a_tcp_engine() -> None:
    proc = _script_args({"DOCKER_HOST": "tcp://127.0.0.1:2375", "CONTROL_PLANE_URL": URL})
    assert proc.returncode != 0 and "unix socket" in proc.stderr


# --------------------------------------------------------------------------- healthcheck


async def test_healthcheck_asks_the_runner_status_port() -> None:
    snapshot: dict[str, Any] = {"health": "ok", "triton": {"ready": True}, "last_error": None}
    server = StatusServer(lambda: dict(snapshot), 0)
    await server.start()
    try:
        ok, detail = await asyncio.to_thread(healthcheck, server.port)
        assert ok, detail
        snapshot.update(health="degraded", triton={"ready": False}, last_error="Triton exited")
        ok, detail = await asyncio.to_thread(healthcheck, server.port)
        assert not ok and "degraded" in detail and "Triton exited" in detail
        snapshot.update(health="stopping")
        assert not (await asyncio.to_thread(healthcheck, server.port))[0]
        port = server.port
    finally:
        await server.stop()
    ok, detail = await asyncio.to_thread(healthcheck, port, 2.0)
    assert not ok and "no runner answering" in detail


def test_healthcheck_cli_exit_codes(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("GPUFLEET_RUNNER_STATUS_PORT", str(port))
    assert main(["healthcheck", "--timeout", "1"]) == 1


# --------------------------------------------------------------------------- files


def _dockerfile_env_names() -> set[str]:
    text = (ROOT / "Dockerfile.runner").read_text()
    return set(re.findall(r"\b(GPUFLEET_RUNNER_[A-Z_]+)=", text))


def test_image_and_systemd_settings_are_runner_settings() -> None:
    names = _dockerfile_env_names()
    assert "GPUFLEET_RUNNER_STATE_DIR" in names
    assert names <= _settings_env_names(), names - _settings_env_names()
    env_example = (ROOT / "deploy" / "runner.env.example").read_text()
    example = set(re.findall(r"^#?\s*(GPUFLEET_RUNNER_[A-Z_]+)=", env_example, re.M))
    assert {"GPUFLEET_RUNNER_CONTROL_PLANE_URL", JOIN_TOKEN_ENV} <= example
    assert example <= _settings_env_names(), example - _settings_env_names()


def test_systemd_unit_runs_the_runner_with_its_env_file() -> None:
    unit = (ROOT / "deploy" / "gpufleet-runner.service").read_text()
    sections = set(re.findall(r"^\[(\w+)\]$", unit, re.M))
    assert sections == {"Unit", "Service", "Install"}
    assert re.search(r"^ExecStart=\S*gpufleet-runner start$", unit, re.M)
    assert re.search(r"^EnvironmentFile=/etc/gpufleet/runner\.env$", unit, re.M)
    assert re.search(r"^Restart=always$", unit, re.M)
    assert re.search(r"^KillSignal=SIGTERM$", unit, re.M)
    # the drain (lease_grace_s 30 s) + Triton's exit timeout fit in the stop timeout
    stop = re.search(r"^TimeoutStopSec=(\d+)$", unit, re.M)
    assert stop and int(stop.group(1)) > 40
