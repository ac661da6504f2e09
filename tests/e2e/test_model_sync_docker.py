"""Model sync end to end on real components: a model pushed through the API (SDK
``models.push``) into the store's bucket (the embedded store's blob directory, served by the
control plane), deployed, synced by a real runner (docker backend, an empty model repository
directory) into the real CPU Triton, answering jobs; and an object changed in the bucket
after its upload never becomes READY on the runner.

The control plane is the real app on a real socket (tests/helpers/fleet.py); the heartbeat
answer's ``desired_models`` comes from its placement."""

from __future__ import annotations

import asyncio
import random
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from gpufleet import AsyncClient
from gpufleet.wire import DesiredModel

from control_plane.services.models import object_key
from control_plane.storage.stores import Stores
from runner.backends.container_spec import LABEL_ROLE, LABEL_RUNNER
from runner.daemon import Daemon, build_backend
from runner.gpu import GpuReader
from runner.settings import RunnerSettings
from tests import rig
from tests.helpers.fleet import admin_key, cp_app, cp_services, cp_url  # noqa: F401

pytestmark = [pytest.mark.docker, pytest.mark.slow]
ADD_SUB = Path(__file__).resolve().parents[2] / "model_repository" / "add_sub"


@pytest.fixture
async def client(cp_url: str, admin_key: str) -> AsyncIterator[AsyncClient]:  # noqa: F811
    async with AsyncClient(cp_url, api_key=admin_key, timeout=30.0) as c:
        yield c


def _runner_settings(
    url: str, token: str, docker_host: str, triton_image: str, tmp_path: Path
) -> RunnerSettings:
    return RunnerSettings(
        control_plane_url=url,
        join_token=token,
        name=f"sync-{random.getrandbits(32):08x}",
        backend="docker",
        docker_host=docker_host,
        triton_image=triton_image,
        model_repository=tmp_path / "repository",  # empty: everything comes from the bucket
        state_dir=tmp_path / "state",
        triton_http_port=rig.free_port(),
        triton_grpc_port=rig.free_port(),
        triton_metrics_port=rig.free_port(),
        shm_size="256m",
        ulimits={"stack": 67108864},
        status_port=0,
        triton_exit_timeout_s=2,
    )


def _remove_containers(s: RunnerSettings) -> None:
    import docker

    engine = docker.DockerClient(base_url=s.docker_host)
    try:
        for c in engine.containers.list(
            all=True, filters={"label": [f"{LABEL_RUNNER}={s.name}", f"{LABEL_ROLE}=triton"]}
        ):
            c.remove(force=True)
    finally:
        engine.close()


def _state(daemon: Daemon, name: str, version: str) -> tuple[str | None, str | None]:
    for s in daemon.models.states():
        if s.name == name and s.version == version:
            return s.state, s.reason
    return None, None


async def _until(what: str, check: Any, timeout_s: float, show: Any = None) -> None:
    try:
        async with asyncio.timeout(timeout_s):
            while not check():
                await asyncio.sleep(0.2)
    except TimeoutError:
        seen = show() if show is not None else None
        raise AssertionError(f"timed out waiting for {what}: {seen}") from None


async def test_pushed_model_is_synced_into_triton_and_answers_jobs(
    client: AsyncClient,
    cp_url: str,  # noqa: F811
    stores: Stores,
    docker_host: str,
    triton_image: str,
    tmp_path: Path,
) -> None:
    src = tmp_path / "push" / "add_sub"
    shutil.copytree(ADD_SUB, src, ignore=shutil.ignore_patterns("__pycache__"))
    pushed = await client.models.push(src)
    assert pushed.state == "READY" and pushed.version == "1"
    await client.models.deploy("add_sub", min_replicas=1, max_replicas=1)

    # a second model whose object is changed in the bucket after the upload was verified
    bad_src = tmp_path / "push" / "add_sub_bad"
    shutil.copytree(ADD_SUB, bad_src, ignore=shutil.ignore_patterns("__pycache__"))
    cfg = bad_src / "config.pbtxt"
    cfg.write_text(cfg.read_text().replace('name: "add_sub"', 'name: "add_sub_bad"'))
    with open(bad_src / "1" / "model.py", "a") as f:  # other bytes than add_sub's (the cache
        f.write("# add_sub_bad\n")  # is content-addressed: same bytes are never fetched twice)
    bad = await client.models.push(bad_src)
    model_py = next(f for f in bad.files if f.path.endswith("model.py"))
    url = stores.blobs.presign_put(object_key("add_sub_bad", bad.version, model_py.path), 60)
    changed = await asyncio.to_thread(
        httpx.put, url, content=b"import os\nos.system('echo owned')\n", timeout=30
    )
    assert changed.status_code == 200, changed.text
    await client.models.deploy("add_sub_bad", min_replicas=1, max_replicas=1)

    token = (await client.admin.create_join_token(region="default")).join_token
    rs = _runner_settings(cp_url, token, docker_host, triton_image, tmp_path)
    gpus = GpuReader()
    daemon = Daemon(rs, build_backend(rs, gpus), gpus=gpus)
    run = asyncio.create_task(daemon.run(install_signals=False))
    try:
        await _until(
            "add_sub v1 READY on the runner",
            lambda: _state(daemon, "add_sub", "1")[0] == "READY" or run.done(),
            240,
        )
        assert not run.done(), run
        repo = rs.model_repository
        assert sorted(
            p.relative_to(repo / "add_sub").as_posix() for p in (repo / "add_sub").rglob("*")
        ) == ["1", "1/model.py", "config.pbtxt"]
        cached = {p.name for p in (rs.state_dir / "cache" / "sha256").iterdir()}
        assert {f.sha256 for f in pushed.files} <= cached

        rng = np.random.default_rng(4)
        for _ in range(3):
            a = rng.standard_normal((2, 4)).astype(np.float32)
            b = rng.standard_normal((2, 4)).astype(np.float32)
            out = await client.infer("add_sub", {"INPUT0": a, "INPUT1": b}, timeout=120)
            np.testing.assert_allclose(out["OUTPUT0"], a + b, rtol=1e-6)
            np.testing.assert_allclose(out["OUTPUT1"], a - b, rtol=1e-6)

        # the changed object: refused at download, reported, never READY, never in the repo
        await _until(
            "add_sub_bad reported UNAVAILABLE",
            lambda: _state(daemon, "add_sub_bad", bad.version)[0] == "UNAVAILABLE",
            60,
            lambda: (daemon.models.states(), daemon.models._desired),
        )
        _, reason = _state(daemon, "add_sub_bad", bad.version)
        assert reason is not None and "mismatch" in reason, reason
        assert not (repo / "add_sub_bad").exists()
        await asyncio.sleep(3)  # a few retries later: still not READY
        assert _state(daemon, "add_sub_bad", bad.version)[0] != "READY"

        # What the control plane knows comes with the next heartbeat (the infers above were
        # dispatched over the runner's channel, which does not wait for one).
        expected = {("add_sub", "1"): "READY", ("add_sub_bad", bad.version): "UNAVAILABLE"}
        reported: dict[tuple[str, str], str] = {}
        async with asyncio.timeout(60):
            while any(reported.get(k) != v for k, v in expected.items()):
                await asyncio.sleep(0.5)
                runners = await client.runners.list()
                (view,) = [r for r in runners if r.id == daemon.identity.runner_id]
                reported = {(m.name, m.version): m.state for m in view.models}
    finally:
        daemon.request_stop()
        try:
            await asyncio.wait_for(run, 90)
        finally:
            _remove_containers(rs)


async def test_version_switch_in_real_triton_without_a_failed_request(
    docker_host: str, triton_image: str, tmp_path: Path
) -> None:
    """The runner's sync component driven directly (files from a loopback HTTP server):
    [v1] → [v1, v2] → [v2] in the real Triton; requests never fail during the switch."""
    from gpufleet.wire import Tensor

    from runner.cache import ContentCache
    from runner.model_download import Downloader
    from runner.model_manager import ModelManager
    from tests.runner.test_runner_model_sync import FileServer

    config = (ADD_SUB / "config.pbtxt").read_bytes()
    code_v1 = (ADD_SUB / "1" / "model.py").read_bytes()
    code_v2 = code_v1.replace(b"np.add(in0, in1)", b"(np.add(in0, in1) + 100)")
    assert code_v2 != code_v1
    server = FileServer()

    def version(v: str, code: bytes) -> DesiredModel:
        return DesiredModel(
            name="add_sub",
            version=v,
            files=[
                server.add(f"add_sub/{v}/config.pbtxt", config, "config.pbtxt"),
                server.add(f"add_sub/{v}/model.py", code, f"{v}/model.py"),
            ],
        )

    rs = _runner_settings("http://127.0.0.1:9", "unused-token", docker_host, triton_image, tmp_path)
    backend = build_backend(rs, GpuReader())
    downloader = Downloader(ContentCache(rs.state_dir / "cache"))
    manager = ModelManager(
        backend.engine,
        rs.model_repository,
        downloader=downloader,
        state_dir=rs.state_dir,
        drain_settle_s=1.0,  # requests here are direct, not leased: no long poll to outlast
    )
    a = np.arange(8, dtype=np.float32).reshape(2, 4)
    inputs = [
        Tensor(name="INPUT0", datatype="FP32", shape=[2, 4], data=a.flatten().tolist()),
        Tensor(name="INPUT1", datatype="FP32", shape=[2, 4], data=[1.0] * 8),
    ]

    async def infer(v: str) -> np.ndarray:
        out = await backend.engine.infer("add_sub", v, inputs, None, {}, 60)
        (o0,) = [t for t in out if t.name == "OUTPUT0"]
        return np.array(o0.data, dtype=np.float32).reshape(2, 4)

    stop = asyncio.Event()
    served: list[str] = []
    errors: list[BaseException] = []

    async def stream() -> None:  # a steady client: newest READY version, like the job loop
        while not stop.is_set():
            ready = sorted((r.version for r in manager.ready_refs()), key=int)
            if ready:
                try:
                    got = await infer(ready[-1])
                    expected = a + 1 + (100 if ready[-1] == "2" else 0)
                    np.testing.assert_allclose(got, expected)
                    served.append(ready[-1])
                except BaseException as exc:
                    errors.append(exc)
            await asyncio.sleep(0.01)

    await backend.start()
    client = asyncio.create_task(stream())
    try:
        v1, v2 = version("1", code_v1), version("2", code_v2)
        manager.set_desired([v1])
        assert await manager.reconcile(), manager.states()
        await _until("v1 served", lambda: "1" in served, 30)
        manager.set_desired([v1, v2])
        assert await manager.reconcile(), manager.states()
        assert await backend.engine.model_ready("add_sub", "1")
        assert await backend.engine.model_ready("add_sub", "2")
        await _until("v2 served", lambda: "2" in served, 30)
        manager.set_desired([v2])
        assert await manager.reconcile(), manager.states()
        assert not await backend.engine.model_ready("add_sub", "1")
        assert await backend.engine.model_ready("add_sub", "2")
        n = len(served)
        await _until("more requests on v2", lambda: len(served) > n + 20, 30)
        # the statistics the memory figure is read from: present, and no GPU memory on CPU
        stats = await backend.engine._triton().get_inference_statistics(  # type: ignore[attr-defined]
            "add_sub", "2", as_json=True
        )
        assert stats["model_stats"][0]["version"] == "2"
        assert await backend.engine.model_memory_bytes("add_sub", "2") is None  # type: ignore[attr-defined]
        assert [(s.version, s.state) for s in manager.states()] == [("2", "READY")]
        files = sorted(
            p.relative_to(rs.model_repository).as_posix()
            for p in rs.model_repository.rglob("*")
            if p.is_file()
        )
        assert files == ["add_sub/2/model.py", "add_sub/config.pbtxt"]
    finally:
        stop.set()
        await client
        await downloader.aclose()
        await backend.stop()
        server.close()
        _remove_containers(rs)
    assert errors == []
    assert served.count("1") > 0 and served.count("2") > 20


async def test_rollout_through_the_control_plane_fails_no_job(
    client: AsyncClient,
    cp_url: str,  # noqa: F811
    docker_host: str,
    triton_image: str,
    tmp_path: Path,
) -> None:
    """v1 deployed and serving; v2 pushed: the control plane's desired lists move the
    runner to v2 while jobs keep coming, and none of them fails."""
    src = tmp_path / "push" / "add_sub"
    shutil.copytree(ADD_SUB, src, ignore=shutil.ignore_patterns("__pycache__"))
    await client.models.push(src)
    await client.models.deploy("add_sub", min_replicas=1, max_replicas=1)
    token = (await client.admin.create_join_token(region="default")).join_token
    rs = _runner_settings(cp_url, token, docker_host, triton_image, tmp_path)
    gpus = GpuReader()
    daemon = Daemon(rs, build_backend(rs, gpus), gpus=gpus)
    run = asyncio.create_task(daemon.run(install_signals=False))
    a = np.arange(8, dtype=np.float32).reshape(2, 4)
    b = np.ones((2, 4), dtype=np.float32)
    results: list[tuple[str, bool]] = []
    stop = asyncio.Event()

    async def stream() -> None:
        while not stop.is_set():
            job = await client.submit("add_sub", {"INPUT0": a, "INPUT1": b}, timeout_s=120)
            done = await client.wait(job.id, timeout=180)
            if done.status != "SUCCEEDED":
                results.append((done.status, False))
                continue
            out = await client.outputs(done)
            bump = float(out["OUTPUT0"][0, 0] - (a + b)[0, 0])
            version = done.model_version or "?"
            results.append((version, bump == (100.0 if version == "2" else 0.0)))

    try:
        await _until("add_sub v1 READY", lambda: _state(daemon, "add_sub", "1")[0] == "READY", 240)
        streams = [asyncio.create_task(stream()) for _ in range(2)]
        await _until("jobs on v1", lambda: len(results) >= 4, 60)
        (src / "1").rename(src / "2")
        code = (src / "2" / "model.py").read_text()
        (src / "2" / "model.py").write_text(
            code.replace("np.add(in0, in1)", "(np.add(in0, in1) + 100)")
        )
        v2 = await client.models.push(src)
        assert v2.version == "2"
        await _until(
            "the runner on v2 only",
            lambda: [(s.version, s.state) for s in daemon.models.states()] == [("2", "READY")],
            240,
            lambda: daemon.models.states(),
        )
        n = len(results)
        await _until("jobs on v2", lambda: len(results) >= n + 4, 120)
        stop.set()
        await asyncio.wait_for(asyncio.gather(*streams), 200)
    finally:
        stop.set()
        daemon.request_stop()
        try:
            await asyncio.wait_for(run, 90)
        finally:
            _remove_containers(rs)
    assert all(ok for _, ok in results), results
    versions = [v for v, _ in results]
    assert "1" in versions and versions[-1] == "2", versions
