"""The capacity autoscaler with the docker provider, on real processes: an embedded control
plane (subprocess, real socket) starts and stops runner containers (the project's runner
image, mock backend: no Triton needed to prove scaling) on the real Docker engine.

- An idle pool has 0 runners; a burst of jobs starts containers up to ``max_hosts``, every
  job succeeds, the pool drains back to 0 after the idle timeout, and no container is
  stopped while its runner holds a lease (a watcher checks each container that goes away
  against its runner's last heartbeat, and every job ran exactly once).
- A host whose runner never registers is stopped after ``join_timeout_s``, counted as a
  failed launch, and replaced after the backoff.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker.errors
import httpx
import numpy as np
import pytest
from gpufleet import Client

from tests import rig
from tests.helpers.procs import start_control_plane

pytestmark = [
    pytest.mark.docker,
    pytest.mark.slow,
    pytest.mark.timeout(600),
    pytest.mark.xdist_group("runner_image"),  # the runner image is built once, on one worker
]

# Built from this tree by each run (cached layers: seconds when nothing changed), under a tag
# of its own: an image another checkout built may speak another runner protocol.
IMAGE = "gpufleet/runner:e2e-capacity"
RIG_BASE_IMAGE = "gpufleet/rig-bookworm-base:1"
POOL_LABEL = "gpufleet.pool"


@pytest.fixture(scope="module")
def runner_image(docker_host: str, triton_image: str) -> str:
    """The runner image of this tree (scripts/deploy-runner.sh build, offline)."""
    base = RIG_BASE_IMAGE if rig.image_present(docker_host, RIG_BASE_IMAGE) else triton_image
    env = {k: v for k, v in os.environ.items() if not k.startswith("GPUFLEET_RUNNER_")}
    env.update(DOCKER_HOST=docker_host, BASE_IMAGE=base, IMAGE=IMAGE)
    proc = subprocess.run(
        ["bash", str(rig.REPO_ROOT / "scripts" / "deploy-runner.sh"), "build"],
        cwd=rig.REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return IMAGE


class Admin:
    """The pools API over HTTP with an admin access token."""

    def __init__(self, url: str, api_key: str) -> None:
        token = httpx.post(f"{url}/v1/auth/token", json={"api_key": api_key}, timeout=30)
        token.raise_for_status()
        self.http = httpx.Client(
            base_url=url,
            headers={"Authorization": f"Bearer {token.json()['access_token']}"},
            timeout=30,
        )

    def put_pool(self, name: str, spec: dict[str, Any]) -> dict[str, Any]:
        r = self.http.put(f"/v1/pools/{name}", json=spec)
        assert r.status_code == 200, r.text
        return dict(r.json())

    def pool(self, name: str) -> dict[str, Any]:
        r = self.http.get(f"/v1/pools/{name}")
        assert r.status_code == 200, r.text
        return dict(r.json())

    def runners(self) -> list[dict[str, Any]]:
        r = self.http.get("/v1/runners")
        assert r.status_code == 200, r.text
        return list(r.json()["runners"])


@pytest.fixture
def fleet(docker_host: str, tmp_path: Path) -> Iterator[tuple[str, str, Any]]:
    """(url, admin key, docker client): an embedded control plane whose docker provider uses
    the test engine; every container of the test's pools is removed afterwards."""
    cp = start_control_plane(
        tmp_path / "cp",
        {
            "GPUFLEET_CAPACITY_INTERVAL_S": "1",
            "GPUFLEET_CAPACITY_DRAIN_SETTLE_S": "2",
            "GPUFLEET_CAPACITY_DOCKER_HOST": docker_host,
            "GPUFLEET_RUNNER_OFFLINE_AFTER_S": "30",
            "GPUFLEET_MAX_LEASE_WAIT_S": "1",
        },
    )
    docker = rig.docker_client(docker_host)
    try:
        yield cp.url, cp.admin_key, docker
    finally:
        cp.stop()
        for c in docker.containers.list(all=True, filters={"label": "gpufleet.capacity"}):
            if c.labels.get(POOL_LABEL, "").startswith("e2e-"):
                host = c.labels["gpufleet.host"]
                c.remove(force=True)
                # the Triton container a killed runner could not stop
                for t in docker.containers.list(
                    all=True, filters={"label": f"gpufleet.runner={host}"}
                ):
                    t.remove(force=True)
        docker.close()


def _pool_spec(image: str, **over: Any) -> dict[str, Any]:
    settings = {
        "image": image,
        "env": {
            "GPUFLEET_RUNNER_BACKEND": "mock",
            "GPUFLEET_RUNNER_MODEL_REPOSITORY": "/models",
            "GPUFLEET_RUNNER_LEASE_GRACE_S": "5",
        },
        "volumes": [f"{rig.MODEL_REPOSITORY}:/models:ro"],
        "stop_timeout_s": 20,
    }
    settings.update(over.pop("settings", {}))
    spec: dict[str, Any] = {
        "max_hosts": 2,
        "jobs_per_host": 2,
        "idle_timeout_s": 6,
        "join_timeout_s": 90,
        "launch_backoff_s": 1,
        "models": ["add_sub"],
        "provider": {"kind": "docker", "settings": settings},
    }
    spec.update(over)
    return spec


def _listed(engine: Any, label: str) -> list[Any]:
    """Containers with ``label`` (all states); the SDK inspects each one it lists, so one
    removed in between (a pool scaling in) is a NotFound: list again."""
    for _ in range(20):
        try:
            return list(engine.containers.list(all=True, filters={"label": label}))
        except docker.errors.NotFound:
            time.sleep(0.1)
    return list(engine.containers.list(all=True, filters={"label": label}))


def _containers(engine: Any, pool: str) -> list[Any]:
    return _listed(engine, f"{POOL_LABEL}={pool}")


class Watcher(threading.Thread):
    """Every 0.3 s: which containers of the pool exist, and each runner's last heartbeat.
    A container that disappears must have had a runner that was draining and reported no
    running job (or never registered)."""

    def __init__(self, admin: Admin, docker: Any, pool: str) -> None:
        super().__init__(daemon=True)
        self.admin, self.docker, self.pool = admin, docker, pool
        self.stop_event = threading.Event()
        self.max_containers = 0
        self.seen: set[str] = set()
        self.violations: list[str] = []
        self.last: dict[str, dict[str, Any]] = {}  # host id -> runner view

    def run(self) -> None:
        alive: set[str] = set()
        while not self.stop_event.is_set():
            try:  # a container removed between list and inspect: look again
                hosts = {c.labels["gpufleet.host"] for c in _containers(self.docker, self.pool)}
                runners = self.admin.runners()
            except docker.errors.NotFound:
                continue
            except httpx.HTTPError:  # the control plane is gone (the test failed): stop
                return
            for r in runners:
                host = r["labels"].get("gpufleet.host")
                if host in hosts:
                    self.last[host] = r
            for gone in alive - hosts:
                r = self.last.get(gone)
                if r is not None and (r["running_jobs"] or r["status"] != "DRAINING"):
                    self.violations.append(
                        f"{gone} stopped while {r['status']} {r['running_jobs']}"
                    )
            self.seen |= hosts
            self.max_containers = max(self.max_containers, len(hosts))
            alive = hosts
            time.sleep(0.3)


def _until(what: str, timeout: float, check: Any, every: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        time.sleep(every)
    pytest.fail(f"{what} not within {timeout:.0f} s")


def test_burst_scales_from_zero_to_max_and_back_to_zero(
    fleet: tuple[str, str, Any], runner_image: str
) -> None:
    url, key, docker = fleet
    admin = Admin(url, key)
    pool = "e2e-burst"
    with Client(url, api_key=key, timeout=30.0) as client:
        client.models.push(rig.MODEL_REPOSITORY / "add_sub")
        view = admin.put_pool(pool, _pool_spec(runner_image))
        assert view["spec"]["max_hosts"] == 2
        time.sleep(3)  # a few rounds with no work: nothing starts
        assert _containers(docker, pool) == []
        assert admin.pool(pool)["hosts"] == []

        watcher = Watcher(admin, docker, pool)
        watcher.start()
        x = np.arange(4, dtype=np.float32).reshape(1, 4)
        t0 = time.monotonic()
        ids = client.submit_batch(
            {"model": "add_sub", "inputs": {"INPUT0": x, "INPUT1": x}, "timeout_s": 300}
            for _ in range(12)
        )
        waiting = _until(
            "a waiting reason naming the pool",
            10,
            lambda: (
                (v := client.get(ids[-1])).waiting_reason
                and "starting a host" in v.waiting_reason
                and v
            ),
            every=0.1,  # the mock runner's host registers within seconds
        )
        assert f"starting a host in pool {pool} (default)" in waiting.waiting_reason
        views = [client.wait(i, timeout=240) for i in ids]
        first_result_s = time.monotonic() - t0
        assert [v.status for v in views] == ["SUCCEEDED"] * 12, views
        assert all(v.attempts == 1 for v in views)  # no lease lost to a stopped host
        assert all(v.cold_host is True for v in views)  # each waited for a host to start
        state = admin.pool(pool)
        assert {e["action"] for e in state["events"]} >= {"launch"}
        assert watcher.max_containers == 2  # 12 jobs, 2 per host: capped at max_hosts
        assert "capped at max_hosts=2" in next(
            e["reason"] for e in reversed(state["events"]) if e["action"] == "launch"
        )

        _until(
            "the pool back to zero containers",
            90,
            lambda: not _containers(docker, pool) and admin.pool(pool)["hosts"] == [],
        )
        watcher.stop_event.set()
        watcher.join(5)
        assert watcher.violations == []
        assert len(watcher.seen) == 2
        actions = [e["action"] for e in admin.pool(pool)["events"]]
        assert actions.count("drain") == 2 and actions.count("terminate") == 2
        print(f"12 jobs from an empty pool in {first_result_s:.1f} s; back to zero after")

        metrics = httpx.get(f"{url}/metrics", timeout=10).text
        assert f'gpufleet_pool_target_hosts{{pool="{pool}"}} 0.0' in metrics
        assert f'gpufleet_pool_actions_total{{action="launch",pool="{pool}"}}' in metrics


def test_host_that_never_registers_is_replaced(
    fleet: tuple[str, str, Any], runner_image: str
) -> None:
    url, key, docker = fleet
    admin = Admin(url, key)
    pool = "e2e-join"
    dead = f"http://127.0.0.1:{rig.free_port()}"  # nothing listens: the runner cannot join
    with Client(url, api_key=key, timeout=30.0) as client:
        client.models.push(rig.MODEL_REPOSITORY / "add_sub")
        admin.put_pool(
            pool,
            _pool_spec(
                runner_image, max_hosts=1, join_timeout_s=8, settings={"control_plane_url": dead}
            ),
        )
        x = np.ones((1, 4), dtype=np.float32)
        job = client.submit("add_sub", {"INPUT0": x, "INPUT1": x})
        first = _until("a first host", 30, lambda: _containers(docker, pool))
        bad_host = first[0].labels["gpufleet.host"]

        def failed() -> bool:
            return any(
                e["action"] == "terminate" and e["host"] == bad_host
                for e in admin.pool(pool)["events"]
            )

        _until("the unregistered host stopped", 40, failed)
        state = admin.pool(pool)
        assert state["failed_launches"] == 1
        term = next(e for e in state["events"] if e["action"] == "terminate")
        assert "join_timeout_s=8" in term["reason"]
        assert all(c.labels["gpufleet.host"] != bad_host for c in _containers(docker, pool))

        admin.put_pool(pool, _pool_spec(runner_image, max_hosts=1, join_timeout_s=60))  # fixed
        view = client.wait(job.id, timeout=120)
        assert view.status == "SUCCEEDED"
        hosts = _until(
            "the replacement shown registered",
            10,
            lambda: [h for h in admin.pool(pool)["hosts"] if h["runner_id"]],
        )
        assert len(hosts) == 1 and hosts[0]["id"] != bad_host
        assert admin.pool(pool)["failed_launches"] == 0  # a host joined: backoff reset


def test_runner_with_real_triton_from_zero_and_back(
    fleet: tuple[str, str, Any],
    runner_image: str,
    triton_image: str,
    docker_host: str,
    tmp_path: Path,
) -> None:
    """The runner image with the CPU Triton image (a sibling container through the engine's
    socket): the first job on an empty pool gets Triton's real answer, then the pool (and
    Triton) go away."""
    url, key, docker = fleet
    admin = Admin(url, key)
    pool = "e2e-triton"
    if not docker_host.startswith("unix://"):
        pytest.skip(f"the runner container needs the engine's socket; {docker_host} is not one")
    sock_path = docker_host.removeprefix("unix://")
    models = tmp_path / "models"
    shutil.copytree(rig.MODEL_REPOSITORY / "add_sub", models / "add_sub")
    for p in [models, *models.rglob("*")]:
        os.chmod(p, 0o777 if p.is_dir() else 0o666)  # the runner's non-root user
    spec = _pool_spec(
        runner_image,
        max_hosts=1,
        idle_timeout_s=4,
        settings={
            "env": {
                "GPUFLEET_RUNNER_BACKEND": "docker",
                "GPUFLEET_RUNNER_MODEL_REPOSITORY": str(models),
                "GPUFLEET_RUNNER_DOCKER_HOST": "unix:///var/run/docker.sock",
                "GPUFLEET_RUNNER_TRITON_IMAGE": triton_image,
                "GPUFLEET_RUNNER_TRITON_HTTP_PORT": str(rig.free_port()),
                "GPUFLEET_RUNNER_TRITON_GRPC_PORT": str(rig.free_port()),
                "GPUFLEET_RUNNER_TRITON_METRICS_PORT": str(rig.free_port()),
                "GPUFLEET_RUNNER_SHM_SIZE": "256m",
                "GPUFLEET_RUNNER_ULIMITS": '{"stack": 67108864}',
                "GPUFLEET_RUNNER_TRITON_EXIT_TIMEOUT_S": "2",
                "GPUFLEET_RUNNER_LEASE_GRACE_S": "5",
            },
            "volumes": [f"{sock_path}:/var/run/docker.sock", f"{models}:{models}"],
            "group_add": [str(os.stat(sock_path).st_gid)],
        },
    )
    with Client(url, api_key=key, timeout=60.0) as client:
        client.models.push(rig.MODEL_REPOSITORY / "add_sub")
        admin.put_pool(pool, spec)
        a = np.arange(8, dtype=np.float32).reshape(2, 4)
        job = client.submit("add_sub", {"INPUT0": a, "INPUT1": a * 3})
        view = client.wait(job.id, timeout=300)
        assert view.status == "SUCCEEDED", view
        out = client.outputs(view)
        np.testing.assert_allclose(out["OUTPUT0"], a * 4)
        np.testing.assert_allclose(out["OUTPUT1"], -2 * a)
        assert view.cold_host is True
        warm = client.wait(client.submit("add_sub", {"INPUT0": a, "INPUT1": a}).id, timeout=60)
        assert warm.status == "SUCCEEDED" and warm.cold_host is False  # the host was up
        (host,) = admin.pool(pool)["hosts"]
        tritons = docker.containers.list(
            filters={"label": [f"gpufleet.runner={host['id']}", "gpufleet.role=triton"]}
        )
        assert len(tritons) == 1  # the runner's own Triton, started through the socket
        _until(
            "the pool and its Triton gone",
            120,
            lambda: (
                not _containers(docker, pool)
                and not _listed(docker, f"gpufleet.runner={host['id']}")
            ),
        )
