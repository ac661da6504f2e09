"""A runner that cannot work says so plainly, as a real process: a malformed URL, a refused or
missing join token, no control plane at the URL, Docker unreachable and a second runner on
the same host exit non-zero with one line and no traceback; a control plane that stays down
is retried with one warning line per attempt, ``status`` stops saying ``ok``, and SIGTERM
still exits 0."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.helpers.procs import start_control_plane
from tests.runner.test_runner_control_plane import ControlPlane

ROOT = Path(__file__).resolve().parents[2]
REPO = ROOT / "model_repository"

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def control_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    cp = start_control_plane(tmp_path_factory.mktemp("cp"), {})
    try:
        yield ControlPlane(cp.url, cp.admin_key)
    finally:
        cp.stop()


def runner_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GPUFLEET_RUNNER_")}
    env.update(
        {
            "GPUFLEET_RUNNER_STATE_DIR": str(tmp_path / "state"),
            "GPUFLEET_RUNNER_STATUS_PORT": str(free_port()),
            "GPUFLEET_RUNNER_MODEL_REPOSITORY": str(REPO),
            "XDG_CONFIG_HOME": str(tmp_path / "xdg"),
            **extra,
        }
    )
    return env


def start(env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "runner", "start", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def finished(proc: subprocess.Popen[str], timeout: float = 30) -> tuple[int, str]:
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        raise AssertionError(f"the runner did not exit within {timeout}s:\n{out}") from None
    return proc.returncode, out


def test_malformed_url_exits_2_naming_the_setting(tmp_path: Path) -> None:
    proc = start(runner_env(tmp_path), "--control-plane-url", "localhost:8080", "--backend", "mock")
    code, out = finished(proc)
    assert code == 2, out
    assert "control_plane_url" in out and "http:// or https://" in out
    assert "Traceback" not in out and "pydantic" not in out.lower()


@pytest.mark.parametrize("token", ["gfj_wrongwrongwrong", "gfj_x", None])
def test_refused_or_missing_join_token_exits_2_at_once(
    control_plane: ControlPlane, tmp_path: Path, token: str | None
) -> None:
    env = runner_env(tmp_path, **({"GPUFLEET_RUNNER_JOIN_TOKEN": token} if token else {}))
    started = time.monotonic()
    code, out = finished(start(env, "--control-plane-url", control_plane.url, "--backend", "mock"))
    assert code == 2, out
    assert time.monotonic() - started < 20
    if token == "gfj_x":  # malformed: refused before it is sent
        assert "join_token" in out and "gpufleet admin join-token" in out
    elif token:
        assert f"the control plane at {control_plane.url} refused the join token" in out
    else:
        assert "no join token" in out and "gpufleet admin join-token" in out
    assert "Traceback" not in out


def test_no_control_plane_at_the_url_exits_2(tmp_path: Path) -> None:
    # a plain HTTP server that is not a control plane: 404 on /v1/runners/register
    server = subprocess.Popen(
        [sys.executable, "-m", "http.server", "--bind", "127.0.0.1", str(port := free_port())],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(100):
            try:
                httpx.get(f"http://127.0.0.1:{port}/", timeout=1)
                break
            except httpx.HTTPError:
                time.sleep(0.1)
        env = runner_env(tmp_path, GPUFLEET_RUNNER_JOIN_TOKEN="gfj_notchecked")
        url = f"http://127.0.0.1:{port}"
        code, out = finished(start(env, "--control-plane-url", url, "--backend", "mock"))
    finally:
        server.terminate()
        server.wait(10)
    assert code == 2, out
    assert f"no gpufleet control plane at {url}" in out and "Traceback" not in out


def test_docker_unreachable_is_one_line(control_plane: ControlPlane, tmp_path: Path) -> None:
    env = runner_env(
        tmp_path,
        GPUFLEET_RUNNER_JOIN_TOKEN=control_plane.join_token(),
        DOCKER_HOST=f"unix://{tmp_path}/no-docker.sock",
    )
    env.pop("GPUFLEET_RUNNER_DOCKER_HOST", None)
    code, out = finished(
        start(env, "--control-plane-url", control_plane.url, "--backend", "docker"), 60
    )
    assert code == 1, out
    assert f"Docker at unix://{tmp_path}/no-docker.sock does not answer" in out
    assert "--backend process" in out and "DOCKER_HOST" in out
    assert "Traceback" not in out and len(out.strip().splitlines()) < 10, out


def test_second_runner_on_the_host_and_a_control_plane_that_stays_down(
    control_plane: ControlPlane, tmp_path: Path
) -> None:
    env = runner_env(tmp_path / "one", GPUFLEET_RUNNER_JOIN_TOKEN=control_plane.join_token())
    first = start(env, "--control-plane-url", control_plane.url, "--backend", "mock")
    port = env["GPUFLEET_RUNNER_STATUS_PORT"]
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/status", timeout=2).json()["runner_id"]:
                    break
            except (httpx.HTTPError, ValueError, KeyError):
                pass
            time.sleep(0.2)
        second_env = runner_env(tmp_path / "two", GPUFLEET_RUNNER_STATUS_PORT=port)
        second_env["GPUFLEET_RUNNER_JOIN_TOKEN"] = control_plane.join_token()
        code, out = finished(
            start(second_env, "--control-plane-url", control_plane.url, "--backend", "mock")
        )
        assert code == 2, out
        assert f"a runner is already running here (status on :{port}" in out
        assert "Traceback" not in out
    finally:
        first.send_signal(signal.SIGTERM)
        code, out = finished(first)
    assert code == 0, out

    # the control plane stays down: warnings with the URL and a count, status degraded
    down = f"http://127.0.0.1:{free_port()}"
    env = runner_env(tmp_path / "three", GPUFLEET_RUNNER_JOIN_TOKEN="gfj_unused")
    proc = start(env, "--control-plane-url", down, "--backend", "mock")
    status = f"http://127.0.0.1:{env['GPUFLEET_RUNNER_STATUS_PORT']}/status"
    try:
        seen: dict[str, str] = {}
        deadline = time.monotonic() + 45
        # until degraded because of the control plane (another cause may come first on a
        # loaded machine, e.g. the backend still starting)
        while time.monotonic() < deadline and not (
            seen.get("health") == "degraded" and down in str(seen.get("control_plane"))
        ):
            with contextlib.suppress(httpx.HTTPError, ValueError):
                seen = httpx.get(status, timeout=2).json()
            time.sleep(0.5)
        assert seen.get("health") == "degraded", seen
        assert down in seen["control_plane"] and "not reachable" in seen["control_plane"]
    finally:
        proc.send_signal(signal.SIGTERM)
        code, out = finished(proc)
    assert code == 0, out
    assert f"control plane {down} not reachable" in out
    assert "attempt 2" in out and "Traceback" not in out
