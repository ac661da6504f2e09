"""The whole daemon with the mock backend, a fake NVML and the fake control plane:
registration, heartbeats (GPUs, models, config applied, cancellations), jobs, the local
status server, and the drain on stop."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx

from runner.backends.mock_backend import MockBackend
from runner.cp_client import ControlPlaneClient
from runner.daemon import Daemon
from runner.gpu import GpuReader
from runner.settings import RunnerSettings
from tests.runner.runner_fakes import BASE, FakeControlPlane, FakeNvml, job

REPO = Path(__file__).resolve().parents[2] / "model_repository"


def _add_sub_job(job_id: str) -> dict[str, object]:
    j = job(job_id)
    j["inputs"] = [
        {"name": "INPUT0", "datatype": "FP32", "shape": [2, 4], "data": [1.0] * 8},
        {"name": "INPUT1", "datatype": "FP32", "shape": [2, 4], "data": [2.0] * 8},
    ]
    return j


async def test_daemon_with_mock_backend(tmp_path: Path) -> None:
    cp = FakeControlPlane([_add_sub_job(f"job_{i}") for i in range(3)])
    cp.config = {"lease_wait_s": 0.0, "heartbeat_interval_s": 0.5, "max_concurrency": 4}
    settings = RunnerSettings(
        control_plane_url=BASE,
        join_token="join-token-ok",
        name="mock-host",
        backend="mock",
        model_repository=REPO,
        state_dir=tmp_path,
        status_port=0,
    )
    client = ControlPlaneClient(BASE, transport=httpx.MockTransport(cp))
    daemon = Daemon(settings, MockBackend(REPO), gpus=GpuReader(FakeNvml()), client=client)
    run = asyncio.create_task(daemon.run(install_signals=False))
    async with asyncio.timeout(15):
        while len(cp.completed) < 3 or len(cp.heartbeats) < 2:
            await asyncio.sleep(0.05)

    out = cp.completed["job_0"]
    assert out["status"] == "SUCCEEDED"
    assert {t["name"]: (t["shape"], t["data"]) for t in out["outputs"]} == {
        "OUTPUT0": ([2, 4], [0.0] * 8),
        "OUTPUT1": ([2, 4], [0.0] * 8),
    }
    beat = cp.heartbeats[-1]
    assert [g["uuid"] for g in beat["gpus"]] == ["GPU-1111", "GPU-2222"]
    assert {"name": "add_sub", "version": "1", "state": "READY"} in beat["models"]
    local = {p.name for p in REPO.iterdir() if (p / "config.pbtxt").is_file()}
    assert {m["name"] for m in beat["models"]} == local  # every local model, nothing else
    assert beat["triton"]["backend"] == "mock"
    assert daemon.state.config.max_concurrency == 4  # applied from the heartbeat

    # a running job cancelled at the control plane: the next heartbeat stops it
    daemon.backend.engine.infer = _slow(daemon.backend.engine.infer)  # type: ignore[method-assign]
    cp.queue.append(_add_sub_job("job_cancel"))
    async with asyncio.timeout(10):
        while "job_cancel" not in daemon.state.inflight:
            await asyncio.sleep(0.02)
    cp.cancelled.add("job_cancel")
    async with asyncio.timeout(10):
        while "job_cancel" in daemon.state.inflight:
            await asyncio.sleep(0.02)
    assert "job_cancel" not in cp.completed

    # local status
    port = daemon.status.port
    async with httpx.AsyncClient() as http:
        status = (await http.get(f"http://127.0.0.1:{port}/status")).json()
    assert status["health"] == "ok"
    assert status["runner_id"] == "run_1"
    assert status["triton"]["backend"] == "mock"
    assert {m["state"] for m in status["models"]} == {"READY"}
    assert len(status["models"]) == len(local)
    assert len(status["gpus"]) == 2
    assert status["counters"]["succeeded"] == 3 and status["counters"]["cancelled"] == 1

    daemon.request_stop()
    assert await asyncio.wait_for(run, 10) == 0


def _slow(infer):  # type: ignore[no-untyped-def]
    async def slow(*args, **kwargs):  # type: ignore[no-untyped-def]
        await asyncio.sleep(30)
        return await infer(*args, **kwargs)

    return slow
