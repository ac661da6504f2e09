"""The first hour from a fresh virtual environment: the three wheels built from this
checkout (`make wheels`) installed with pip into a new venv (`python -m venv`; dependencies
come from the package index as pip is configured, its cache makes that fast), then README's
commands run as written with that venv's binaries and nothing of the checkout on the path:
the embedded control plane, a join token, a runner (docker backend, CPU Triton, an empty
model repository), `gpufleet login`, `models push`, `infer` without a deploy, a control-plane
restart, `jobs list`, `jobs logs`, `models list`.

README's lines are read from README.md (its ```bash blocks), with the test's own port, data
directory, join token and Triton image put in for the placeholders, so a README edit that
breaks a user's first hour breaks this test."""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests import rig
from tests.e2e.test_fleet_docker import remove_containers
from tests.helpers.wheels import ROOT, build_wheels

pytestmark = [pytest.mark.docker, pytest.mark.slow, pytest.mark.timeout(600)]

README = ROOT / "README.md"


def readme_block(containing: str) -> list[str]:
    """The commands of README's first ```bash block holding ``containing``: continuation
    lines joined, comments dropped."""
    for block in re.findall(r"```bash\n(.*?)```", README.read_text(), re.DOTALL):
        if containing in block:
            joined = block.replace("\\\n", " ")
            lines = [re.sub(r"\s+#\s.*$", "", line).strip() for line in joined.splitlines()]
            return [line for line in lines if line and not line.startswith("#")]
    raise AssertionError(f"README.md has no ```bash block with {containing!r}")


def readme_line(containing: str) -> str:
    (line,) = [c for c in readme_block(containing) if containing in c][:1]
    return line


class Venv:
    def __init__(self, path: Path, work: Path) -> None:
        self.path, self.work = path, work
        self.bin = path / "bin"
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("GPUFLEET_", "PYTHON", "VIRTUAL_ENV", "XDG_"))
        }
        env.update(
            PATH=f"{self.bin}:/usr/local/bin:/usr/bin:/bin",
            VIRTUAL_ENV=str(path),
            GPUFLEET_CONFIG_DIR=str(work / "gpufleet-config"),  # `gpufleet login` saves here
            XDG_CONFIG_HOME=str(work / "xdg-config"),  # no runner.yaml of the user's
            XDG_DATA_HOME=str(work / "xdg-data"),
            XDG_STATE_HOME=str(work / "xdg-state"),
            COLUMNS="200",
        )
        self.env = env

    def sh(self, line: str, timeout: float = 120, **env: str) -> subprocess.CompletedProcess[str]:
        """``line`` through bash in the work directory, with the venv first on PATH."""
        return subprocess.run(
            ["bash", "-c", line],
            cwd=self.work,
            env={**self.env, **env},
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def spawn(self, line: str, log: Path, **env: str) -> subprocess.Popen[bytes]:
        with log.open("ab") as out:
            return subprocess.Popen(
                ["bash", "-c", f"exec env {line}"],  # env: README's `VAR=… cmd` lines too
                cwd=self.work,
                env={**self.env, **env},
                stdout=out,
                stderr=subprocess.STDOUT,
            )


def stop(proc: subprocess.Popen[bytes] | None, timeout: float = 60) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


def wait_health(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"control plane exited:\n{log.read_text()[-4000:]}")
        with (
            contextlib.suppress(OSError),
            urllib.request.urlopen(f"{url}/v1/health", timeout=2) as resp,  # noqa: S310
        ):
            if resp.status == 200:
                return
        time.sleep(0.2)
    raise AssertionError(f"control plane not answering:\n{log.read_text()[-4000:]}")


def test_readme_first_hour_from_a_fresh_venv(
    docker_host: str, triton_image: str, tmp_path: Path
) -> None:
    started = time.monotonic()
    work = tmp_path / "work"
    work.mkdir()
    shutil.copytree(  # README's commands name model_repository/add_sub
        ROOT / "model_repository" / "add_sub",
        work / "model_repository" / "add_sub",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    wheels = build_wheels(tmp_path / "dist")
    subprocess.run([sys.executable, "-m", "venv", str(tmp_path / "venv")], check=True)
    venv = Venv(tmp_path / "venv", work)
    pip = subprocess.run(
        [str(venv.bin / "pip"), "install", "--quiet", "--disable-pip-version-check", "--no-compile",
         *(str(w) for w in wheels.values())],
        capture_output=True, text=True, timeout=400, check=False,
        env={k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))},
    )  # fmt: skip
    assert pip.returncode == 0, pip.stderr[-4000:]
    installed = time.monotonic() - started
    where = venv.sh(
        "python -c 'import control_plane, runner, gpufleet; "
        "print(control_plane.__file__, runner.__file__, gpufleet.__file__)'"
    )
    assert where.returncode == 0, where.stderr
    assert all(p.startswith(str(venv.path)) for p in where.stdout.split()), where.stdout

    port = rig.free_port()
    url = f"http://127.0.0.1:{port}"

    def port_of(line: str) -> str:
        return line.replace("http://127.0.0.1:8080", url).replace("--port 8080", f"--port {port}")

    # README: "Control plane, embedded" (data in the test's directory: --data-dir)
    serve = readme_line("-m control_plane serve --embedded")
    serve = port_of(serve.replace(".venv/bin/", f"{venv.bin}/")) + f" --data-dir {work / 'data'}"
    cp_log = tmp_path / "control-plane.log"
    cp: subprocess.Popen[bytes] | None = venv.spawn(serve, cp_log)
    runner: subprocess.Popen[bytes] | None = None
    runner_name = f"gf-venv-{port}"
    try:
        assert cp is not None
        wait_health(url, cp, cp_log)
        assert (work / "admin.key").is_file()

        # README: "SDK and CLI" — login first (each next line works as written after it)
        cli = [port_of(line) for line in readme_block("gpufleet login")]
        login, push, infer, listing = cli[0], cli[1], cli[2], cli[3]
        r = venv.sh(login)
        assert r.returncode == 0, r.stderr

        # README: "Runner" — a join token as an admin, then the CPU-only start line
        r = venv.sh(readme_line("gpufleet admin join-token"))
        assert r.returncode == 0, r.stderr
        token = re.search(r"gfj_[A-Za-z0-9_\-]+", r.stdout)
        assert token is not None, r.stdout
        start = readme_line("GPUFLEET_RUNNER_TRITON_IMAGE=")
        start = start.replace("gpufleet/tritonserver-cpu:2.51", triton_image).replace(
            "…", f"--control-plane-url {url} --join-token {shlex.quote(token[0])}"
        )
        empty = work / "runner-models"
        empty.mkdir()
        runner_log = tmp_path / "runner.log"
        runner = venv.spawn(
            start,
            runner_log,
            DOCKER_HOST=docker_host,  # the test rig's engine (a user has /var/run/docker.sock)
            GPUFLEET_RUNNER_NAME=runner_name,
            GPUFLEET_RUNNER_STATE_DIR=str(work / "runner-state"),
            GPUFLEET_RUNNER_MODEL_REPOSITORY=str(empty),
            GPUFLEET_RUNNER_STATUS_PORT=str(rig.free_port()),
            GPUFLEET_RUNNER_TRITON_HTTP_PORT=str(rig.free_port()),
            GPUFLEET_RUNNER_TRITON_GRPC_PORT=str(rig.free_port()),
            GPUFLEET_RUNNER_TRITON_METRICS_PORT=str(rig.free_port()),
            GPUFLEET_RUNNER_SHM_SIZE="256m",
        )

        r = venv.sh(push)
        assert r.returncode == 0, r.stderr
        r = venv.sh(infer, timeout=300)  # no deploy: the implicit deployment cold-starts it
        assert r.returncode == 0, f"{r.stdout}\n{r.stderr}\n{runner_log.read_text()[-3000:]}"
        assert "OUTPUT0" in r.stdout and "2" in r.stdout, r.stdout

        stop(cp)  # restart: the same command, the same data
        cp = venv.spawn(serve, cp_log)
        wait_health(url, cp, cp_log)

        r = venv.sh(listing)
        assert r.returncode == 0, r.stderr
        job = re.search(r"\bjob_[0-9A-Za-z]+", r.stdout)
        assert job is not None and "SUCCEEDED" in r.stdout, r.stdout
        logs = venv.sh(
            f"gpufleet jobs logs {job[0]}"
        )  # README: "then: gpufleet jobs logs <its id>"
        assert logs.returncode == 0, logs.stderr
        assert f"job {job[0]} started" in logs.stdout, logs.stdout
        models = venv.sh("gpufleet models list")
        assert models.returncode == 0 and "add_sub" in models.stdout, models.stdout
    finally:
        stop(runner)
        stop(cp)
        remove_containers(docker_host, runner_name)
    total = time.monotonic() - started
    print(f"\nfresh venv: wheels + install {installed:.0f} s, whole first hour {total:.0f} s")
