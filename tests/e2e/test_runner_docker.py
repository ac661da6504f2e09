"""The runner's docker backend on a real Docker engine with the CPU Triton image:
adoption (no second container), clean stop, and jobs that survive a killed container.

The control plane here is the unit tests' fake (it checks signatures and records
completions); the same flows against the real control plane are in tests/runner/.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from runner.backends.container_spec import LABEL_ROLE, LABEL_RUNNER
from runner.backends.docker_backend import DockerBackend
from runner.cp_client import ControlPlaneClient
from runner.daemon import Daemon, build_backend
from runner.gpu import GpuReader
from runner.settings import RunnerSettings
from tests import rig
from tests.runner.runner_fakes import BASE, FakeControlPlane, job

pytestmark = [pytest.mark.docker, pytest.mark.slow]


@pytest.fixture
def settings(
    docker_host: str, triton_image: str, model_repository: Path, tmp_path: Path
) -> Iterator[RunnerSettings]:
    s = RunnerSettings(
        control_plane_url=BASE,
        join_token="join-token-ok",
        name=f"e2e-{random.getrandbits(32):08x}",
        backend="docker",
        docker_host=docker_host,
        triton_image=triton_image,
        model_repository=model_repository,
        state_dir=tmp_path / "state",
        triton_http_port=rig.free_port(),
        triton_grpc_port=rig.free_port(),
        triton_metrics_port=rig.free_port(),
        shm_size="256m",
        ulimits={"stack": 67108864},  # memlock cannot be raised by this unprivileged engine
        status_port=0,
        restart_backoff_initial_s=0.5,
        triton_exit_timeout_s=2,
    )
    yield s
    import docker

    client = docker.DockerClient(base_url=docker_host)
    for c in _own(client, s):
        c.remove(force=True)
    client.close()


def _own(client: Any, s: RunnerSettings) -> list[Any]:
    return list(
        client.containers.list(
            all=True, filters={"label": [f"{LABEL_RUNNER}={s.name}", f"{LABEL_ROLE}=triton"]}
        )
    )


async def test_restarted_runner_adopts_its_container(settings: RunnerSettings) -> None:
    import docker

    first = build_backend(settings, GpuReader())
    await first.start()
    assert isinstance(first, DockerBackend) and not first.adopted
    await first.engine.aclose()  # the runner "dies" without stopping Triton

    second = build_backend(settings, GpuReader())
    await second.start()
    assert isinstance(second, DockerBackend)
    assert second.adopted and second.container_id == first.container_id
    client = docker.DockerClient(base_url=settings.docker_host)
    try:
        assert len(_own(client, settings)) == 1
        attrs = _own(client, settings)[0].attrs
        assert attrs["HostConfig"]["NetworkMode"] == "host"
        assert attrs["HostConfig"]["ShmSize"] == 256 * 2**20
        mounts = {m["Destination"]: m for m in attrs["Mounts"]}
        assert mounts["/models"]["RW"] is False

        # a different spec (another image tag / key / flags) is recreated, not adopted
        changed = settings.model_copy(update={"triton_extra_args": ["--log-verbose=0"]})
        third = build_backend(changed, GpuReader())
        await third.start()
        assert isinstance(third, DockerBackend) and not third.adopted
        assert len(_own(client, settings)) == 1

        await third.stop()  # clean stop: stopped, removed, logs kept
        assert _own(client, settings) == []
        assert "runner stopped" in settings.triton_log_file.read_text()
    finally:
        client.close()


def _add_sub_job(
    job_id: str, rng: np.random.Generator
) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
    a = rng.standard_normal((2, 4)).astype(np.float32)
    b = rng.standard_normal((2, 4)).astype(np.float32)
    j = job(job_id, timeout_s=120)
    j["inputs"] = [
        {"name": "INPUT0", "datatype": "FP32", "shape": [2, 4], "data": a.flatten().tolist()},
        {"name": "INPUT1", "datatype": "FP32", "shape": [2, 4], "data": b.flatten().tolist()},
    ]
    return j, a, b


async def test_jobs_succeed_through_a_killed_triton(settings: RunnerSettings) -> None:
    import docker

    rng = np.random.default_rng(7)
    expected: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    cp = FakeControlPlane()
    cp.config = {"lease_wait_s": 0.0, "heartbeat_interval_s": 1.0, "max_concurrency": 8}

    def enqueue(start: int, n: int) -> None:
        for i in range(start, start + n):
            j, a, b = _add_sub_job(f"job_{i:03d}", rng)
            expected[j["id"]] = (a, b)
            cp.queue.append(j)

    client = ControlPlaneClient(BASE, transport=httpx.MockTransport(cp))
    gpus = GpuReader()
    daemon = Daemon(settings, build_backend(settings, gpus), gpus=gpus, client=client)
    run = asyncio.create_task(daemon.run(install_signals=False))
    engine = docker.DockerClient(base_url=settings.docker_host)
    try:
        enqueue(0, 25)
        async with asyncio.timeout(120):
            while len(cp.completed) < 25:
                await asyncio.sleep(0.05)
        (container,) = _own(engine, settings)
        await asyncio.to_thread(container.kill)
        enqueue(25, 25)  # leased while Triton is dead: they wait for the restart
        async with asyncio.timeout(60):
            while len(cp.completed) < 50:
                await asyncio.sleep(0.1)
        assert isinstance(daemon.backend, DockerBackend)
        assert daemon.backend.restarts >= 1
        assert len(_own(engine, settings)) == 1

        def reported() -> int:  # Triton's own counter (reset by the restart) in a heartbeat
            models = cp.heartbeats[-1]["triton"].get("models", {}) if cp.heartbeats else {}
            return int(models.get("add_sub", {}).get("success", 0))

        async with asyncio.timeout(20):
            while reported() < 1:
                await asyncio.sleep(0.2)
    finally:
        daemon.request_stop()
        code = await asyncio.wait_for(run, 60)
        engine.close()
    assert code == 0
    for job_id, (a, b) in expected.items():
        done = cp.completed[job_id]
        assert done["status"] == "SUCCEEDED", (job_id, done)
        out = {
            t["name"]: np.array(t["data"], dtype=np.float32).reshape(t["shape"])
            for t in done["outputs"]
        }
        np.testing.assert_allclose(out["OUTPUT0"], a + b, rtol=1e-6)
        np.testing.assert_allclose(out["OUTPUT1"], a - b, rtol=1e-6)
    assert "restart #1" in settings.triton_log_file.read_text()
