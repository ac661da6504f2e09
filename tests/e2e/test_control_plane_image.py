"""The control-plane image on a real Docker engine: `make control-plane-image`'s script builds
Dockerfile.control-plane offline (on the rig's imported Debian base when present) and the
container serves the API as a non-root user: with the embedded store it answers
`/v1/health` ok (asked from inside the container: no port mapping is needed)."""

from __future__ import annotations

import os
import subprocess
import time

import pytest

from tests import rig

pytestmark = [
    pytest.mark.docker,
    pytest.mark.slow,
    pytest.mark.timeout(1200),
    pytest.mark.xdist_group("control_plane_image"),
]

ROOT = rig.REPO_ROOT
RIG_BASE_IMAGE = "gpufleet/rig-bookworm-base:1"
IMAGE = "gpufleet/control-plane:e2e"
HEALTH = (
    "import urllib.request;"
    "print(urllib.request.urlopen('http://127.0.0.1:8080/v1/health', timeout=2).read().decode())"
)


def _docker(docker_host: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, DOCKER_HOST=docker_host)
    return subprocess.run(
        ["docker", *args], env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def test_the_image_builds_and_serves(docker_host: str, triton_image: str) -> None:
    base = RIG_BASE_IMAGE if rig.image_present(docker_host, RIG_BASE_IMAGE) else triton_image
    env = {k: v for k, v in os.environ.items() if not k.startswith("GPUFLEET_")}
    env.update(DOCKER_HOST=docker_host, BASE_IMAGE=base, IMAGE=IMAGE)
    built = subprocess.run(
        ["bash", "scripts/build-control-plane-image.sh"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=1100, check=False,
    )  # fmt: skip
    assert built.returncode == 0, (built.stdout + built.stderr)[-4000:]
    assert f"built {IMAGE}" in built.stdout

    started = _docker(
        docker_host, "run", "-d", "--rm", "--network", "none", IMAGE,
        "python", "-m", "control_plane", "serve", "--host", "127.0.0.1", "--port", "8080",
        "--embedded", "--data-dir", "/var/lib/gpufleet/data",
        "--admin-key-file", "/var/lib/gpufleet/admin.key",
    )  # fmt: skip
    assert started.returncode == 0, started.stderr
    cid = started.stdout.strip()
    try:
        answer = None
        for _ in range(60):
            probe = _docker(docker_host, "exec", cid, "python", "-c", HEALTH)
            if probe.returncode == 0:
                answer = probe.stdout
                break
            time.sleep(0.5)
        assert answer is not None and '"status":"ok"' in answer, _docker(
            docker_host, "logs", cid
        ).stdout
        who = _docker(docker_host, "exec", cid, "id", "-u")
        assert who.stdout.strip() == "10002"  # not root
        # the split distributions: the control plane and the SDK, no runner package
        listing = "import importlib.metadata as m; print(*(d.name for d in m.distributions()))"
        dists = _docker(docker_host, "exec", cid, "python", "-c", listing)
        names = {name.lower() for name in dists.stdout.split()}
        assert {"gpufleet", "gpufleet-control-plane"} <= names, dists.stdout
        assert "gpufleet-runner" not in names
        no_runner = _docker(docker_host, "exec", cid, "python", "-c", "import runner")
        assert no_runner.returncode != 0 and "No module named 'runner'" in no_runner.stderr
    finally:
        _docker(docker_host, "stop", "-t", "5", cid)
