"""The runner image end to end on a real Docker engine: `scripts/deploy-runner.sh` builds
Dockerfile.runner offline on top of a locally imported Debian base, then starts the runner
container exactly as `make deploy-runner` does (host network, the engine's socket, the data
directory with the model repository at the same path on both sides, non-root with the
socket's group); the runner starts the CPU Triton image as a sibling container, registers
with an embedded control plane and serves add_sub jobs submitted through the SDK: from its
local repository, and synced from the bucket after a deployment. The image's HEALTHCHECK
(the runner's status port) must report healthy, and `docker stop` must end in a clean drain
(exit 0, Triton removed).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from gpufleet import Client

from runner.backends.container_spec import LABEL_ROLE, LABEL_RUNNER
from runner.deploy import CONTAINER_DOCKER_SOCKET
from tests import rig
from tests.helpers.procs import start_control_plane

pytestmark = [
    pytest.mark.docker,
    pytest.mark.slow,
    pytest.mark.timeout(900),
    pytest.mark.xdist_group("runner_image"),  # one image build per run, on one worker
]

ROOT = rig.REPO_ROOT
DEPLOY = ROOT / "scripts" / "deploy-runner.sh"
RIG_BASE_IMAGE = "gpufleet/rig-bookworm-base:1"  # made by build-triton-cpu-image.sh
IMAGE = "gpufleet/runner:e2e"
RUNNER_UID = 10001


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GPUFLEET_RUNNER_")}
    env.update(extra)
    return env


def _script(args: list[str], env: dict[str, str], timeout: float) -> str:
    proc = subprocess.run(
        ["bash", str(DEPLOY), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"deploy-runner.sh {' '.join(args)} → {proc.returncode}\n{out}"
    return out


@pytest.fixture(scope="module")
def runner_image(docker_host: str, triton_image: str) -> str:
    """Dockerfile.runner built by the deploy script; the base is the rig's imported Debian
    root file system (python3 3.11, no pip, nothing from a registry)."""
    base = RIG_BASE_IMAGE if rig.image_present(docker_host, RIG_BASE_IMAGE) else triton_image
    t0 = time.monotonic()
    out = _script(
        ["build"],
        _clean_env(DOCKER_HOST=docker_host, BASE_IMAGE=base, IMAGE=IMAGE),
        timeout=600,
    )
    print(f"runner image built in {time.monotonic() - t0:.1f} s on {base}")
    assert f"built {IMAGE}" in out, out
    return IMAGE


@pytest.fixture
def control_plane(tmp_path: Path) -> Iterator[tuple[str, str]]:
    """An embedded control plane (SQLite in tmp_path) on 127.0.0.1: (url, admin key); one per
    test, so one test's deployments do not govern another's runner."""
    try:
        cp = start_control_plane(tmp_path / "cp", {"GPUFLEET_RUNNER_OFFLINE_AFTER_S": "30"})
    except RuntimeError as exc:
        pytest.fail(str(exc))
    try:
        yield cp.url, cp.admin_key
    finally:
        cp.stop()


def _wait_serving(fleet: Client, runner_name: str, timeout_s: float) -> Any:
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        for r in fleet.runners.list():
            if r.name != runner_name:
                continue
            last = r
            states = {m.name: m.state for m in r.models}
            if r.status == "ONLINE" and states.get("add_sub") == "READY":
                return r
        time.sleep(0.5)
    pytest.fail(f"runner {runner_name} does not serve add_sub after {timeout_s:.0f} s: {last}")


def _own_containers(docker: Any, runner_name: str) -> list[Any]:
    return list(
        docker.containers.list(
            all=True, filters={"label": [f"{LABEL_RUNNER}={runner_name}", f"{LABEL_ROLE}=triton"]}
        )
    )


def _check_add_sub_jobs(fleet: Client, seed: int) -> None:
    """A batch of add_sub jobs and one infer through the fleet, checked against numpy."""
    rng = np.random.default_rng(seed)
    cases = [
        (
            rng.uniform(-10, 10, (rows, 4)).astype(np.float32),
            rng.uniform(-10, 10, (rows, 4)).astype(np.float32),
        )
        for rows in (1, 2, 3, 1, 2, 3, 1, 2)
    ]
    t1 = time.monotonic()
    ids = fleet.submit_batch(
        {"model": "add_sub", "inputs": {"INPUT0": a, "INPUT1": b}, "timeout_s": 60}
        for a, b in cases
    )
    for job_id, (a, b) in zip(ids, cases, strict=True):
        view = fleet.wait(job_id, timeout=120)
        assert view.status == "SUCCEEDED", view
        outputs = fleet.outputs(view)
        np.testing.assert_allclose(outputs["OUTPUT0"], a + b, rtol=1e-6)
        np.testing.assert_allclose(outputs["OUTPUT1"], a - b, rtol=1e-6)
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    got = fleet.infer("add_sub", {"INPUT0": x, "INPUT1": x * 3}, timeout=120)
    np.testing.assert_allclose(got["OUTPUT0"], x * 4)
    np.testing.assert_allclose(got["OUTPUT1"], -2 * x)
    took = time.monotonic() - t1
    print(f"{len(ids)} jobs + 1 infer through the runner image in {took:.2f} s")


class _Deployed:
    """The runner container started by `scripts/deploy-runner.sh run`."""

    def __init__(self, docker: Any, name: str, runner_name: str, data_dir: Path) -> None:
        self.docker, self.name, self.runner_name, self.data_dir = (
            docker,
            name,
            runner_name,
            data_dir,
        )

    @property
    def container(self) -> Any:
        return self.docker.containers.get(self.name)

    def remove(self) -> None:
        for c in self.docker.containers.list(all=True, filters={"name": self.name}):
            if c.name == self.name:
                c.remove(force=True)
        for c in self.docker.containers.list(
            all=True, filters={"label": [f"{LABEL_RUNNER}={self.runner_name}"]}
        ):
            c.remove(force=True)


@pytest.fixture
def deploy_runner(
    docker_host: str, triton_image: str, runner_image: str, tmp_path: Path
) -> Iterator[Any]:
    """deploy(url, join_token) → _Deployed: `scripts/deploy-runner.sh run` as an operator
    runs it (GPUS=none: a CPU host), waiting for the image's healthcheck; removed after."""
    docker = rig.docker_client(docker_host)
    started: list[_Deployed] = []

    def deploy(url: str, join_token: str) -> _Deployed:
        suffix = uuid.uuid4().hex[:8]
        dep = _Deployed(docker, f"gpufleet-runner-e2e-{suffix}", f"img-{suffix}", tmp_path / "data")
        started.append(dep)
        env = _clean_env(
            DOCKER_HOST=docker_host,
            IMAGE=runner_image,
            CONTROL_PLANE_URL=url,
            JOIN_TOKEN=join_token,
            GPUS="none",  # CPU host: no device request
            DATA_DIR=str(dep.data_dir),
            TRITON_IMAGE=triton_image,
            RUNNER_NAME=dep.runner_name,
            CONTAINER_NAME=dep.name,
            STATUS_PORT=str(rig.free_port()),
            WAIT_S="240",
            GPUFLEET_RUNNER_TRITON_HTTP_PORT=str(rig.free_port()),
            GPUFLEET_RUNNER_TRITON_GRPC_PORT=str(rig.free_port()),
            GPUFLEET_RUNNER_TRITON_METRICS_PORT=str(rig.free_port()),
            GPUFLEET_RUNNER_SHM_SIZE="256m",
            # memlock cannot be raised by this unprivileged engine
            GPUFLEET_RUNNER_ULIMITS='{"stack": 67108864}',
            GPUFLEET_RUNNER_TRITON_EXIT_TIMEOUT_S="2",
            GPUFLEET_RUNNER_LEASE_GRACE_S="5",
        )
        t0 = time.monotonic()
        out = _script(["run"], env, timeout=300)  # returns once the HEALTHCHECK says healthy
        print(f"runner container healthy {time.monotonic() - t0:.1f} s after docker run")
        assert f"{dep.name} is healthy" in out, out
        assert join_token not in out  # the token is passed by name, never on a command line
        return dep

    try:
        yield deploy
    finally:
        for dep in started:
            dep.remove()
        docker.close()


def _stop_cleanly(dep: _Deployed) -> None:
    """`docker stop` (SIGTERM): the runner drains, stops its Triton and exits 0."""
    container = dep.container
    container.stop(timeout=60)
    container.reload()
    assert container.attrs["State"]["ExitCode"] == 0, container.logs(tail=80).decode()
    assert not _own_containers(dep.docker, dep.runner_name)


def test_runner_image_registers_and_serves_jobs(
    docker_host: str,
    model_repository: Path,
    control_plane: tuple[str, str],
    deploy_runner: Any,
    tmp_path: Path,
) -> None:
    """No deployment governs the runner: it serves the models of its local repository."""
    url, admin_key = control_plane
    # The runner loads what is in <data>/models; the same add_sub is pushed to the
    # control plane (which validates jobs against it).
    shutil.copytree(model_repository / "add_sub", tmp_path / "data" / "models" / "add_sub")
    with Client(url, api_key=admin_key, timeout=30.0) as fleet:
        fleet.models.push(model_repository / "add_sub")
        dep = deploy_runner(url, fleet.admin.create_join_token(region="default").join_token)
        data = str(dep.data_dir)

        container = dep.container
        attrs = container.attrs
        host_cfg = attrs["HostConfig"]
        assert host_cfg["NetworkMode"] == "host"
        assert host_cfg["RestartPolicy"]["Name"] == "unless-stopped"
        assert attrs["Config"]["User"] == f"{RUNNER_UID}:{RUNNER_UID}"
        socket_path = docker_host.removeprefix("unix://")
        assert host_cfg["GroupAdd"] == [str(os.stat(socket_path).st_gid)]
        mounts = {m["Destination"]: m for m in attrs["Mounts"]}
        assert mounts[data]["Source"] == data  # the same path on both sides
        assert mounts[CONTAINER_DOCKER_SOCKET]["Source"] == socket_path
        assert not host_cfg.get("DeviceRequests")  # GPUS=none
        assert attrs["State"]["Health"]["Status"] == "healthy"

        # Triton is the runner's sibling on the same engine; its bind mount of the model
        # repository names the host path, valid because the runner sees the same path
        (triton,) = _own_containers(dep.docker, dep.runner_name)
        triton_mounts = {m["Destination"]: m for m in triton.attrs["Mounts"]}
        assert triton_mounts["/models"]["Source"] == f"{data}/models"

        runner = _wait_serving(fleet, dep.runner_name, 120)
        credentials = dep.data_dir / "runner" / "credentials.json"
        assert credentials.stat().st_uid == RUNNER_UID  # written by the non-root runner

        # the runner's own CLI and the image's healthcheck inside the container
        status = container.exec_run(["gpufleet-runner", "status", "--json"])
        assert status.exit_code == 0, status.output
        assert runner.id.encode() in status.output
        check = container.exec_run(["python", "-m", "runner.deploy", "healthcheck"])
        assert check.exit_code == 0 and check.output.startswith(b"healthy: health=ok"), check
        assert container.exec_run(["id", "-u"]).output.strip() == str(RUNNER_UID).encode()
        # the split distributions: the runner and the SDK, no control_plane package
        listing = "import importlib.metadata as m; print(*(d.name for d in m.distributions()))"
        names = set(container.exec_run(["python", "-c", listing]).output.decode().lower().split())
        assert {"gpufleet", "gpufleet-runner"} <= names and "gpufleet-control-plane" not in names
        no_cp = container.exec_run(["python", "-c", "import control_plane"])
        assert no_cp.exit_code != 0 and b"No module named 'control_plane'" in no_cp.output

        _check_add_sub_jobs(fleet, seed=11)
        _stop_cleanly(dep)


def test_runner_image_syncs_a_deployed_model(
    model_repository: Path, control_plane: tuple[str, str], deploy_runner: Any
) -> None:
    """An empty data directory; add_sub pushed and deployed: the runner in the image
    downloads it from the bucket into <data>/runner/cache, hard-links it into
    <data>/models (one mount) and serves it."""
    url, admin_key = control_plane
    with Client(url, api_key=admin_key, timeout=30.0) as fleet:
        fleet.models.push(model_repository / "add_sub")
        fleet.models.deploy("add_sub", min_replicas=1, max_replicas=1)
        dep = deploy_runner(url, fleet.admin.create_join_token(region="default").join_token)
        _wait_serving(fleet, dep.runner_name, 180)

        synced = dep.data_dir / "models" / "add_sub" / "config.pbtxt"
        assert synced.read_bytes() == (model_repository / "add_sub" / "config.pbtxt").read_bytes()
        assert synced.stat().st_uid == RUNNER_UID
        assert synced.stat().st_nlink >= 2, "expected a hard link into the download cache"

        _check_add_sub_jobs(fleet, seed=12)
        _stop_cleanly(dep)
