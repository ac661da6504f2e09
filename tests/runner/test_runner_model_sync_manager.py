"""The model manager driven by desired lists: sync, load with the override, unload, states,
memory, rollout, and the guarantees (a corrupted object never becomes READY; a tampered
cached file is refused). Files come from a real HTTP server on 127.0.0.1; Triton is a fake
engine that records what it was asked."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from gpufleet.wire import DesiredFile, DesiredModel, GpuInfo

from runner.backends.base import InferError
from runner.cache import ContentCache
from runner.model_download import Downloader
from runner.model_manager import ModelManager
from tests.runner.test_runner_model_sync import FileServer

CONFIG = b'name: "m"\nbackend: "python"\nmax_batch_size: 0\n'


class Engine:
    """Records loads; a version is READY when the last override's version_policy has it."""

    def __init__(self, repository: Path) -> None:
        self.repository = repository
        self.loads: list[tuple[str, dict[str, Any] | None]] = []
        self.unloads: list[str] = []
        self.loaded: dict[str, set[str]] = {}
        self.fail: dict[str, str] = {}
        self.memory_bytes: int | None = None
        self.seen_files: dict[str, list[str]] = {}

    async def server_ready(self) -> bool:
        return True

    async def load_model(self, name: str, config: str | None = None) -> None:
        doc = json.loads(config) if config else None
        self.loads.append((name, doc))
        model_dir = self.repository / name
        self.seen_files[name] = sorted(
            p.relative_to(model_dir).as_posix() for p in model_dir.rglob("*") if p.is_file()
        )
        if name in self.fail:
            raise InferError(self.fail[name])
        versions = doc["version_policy"]["specific"]["versions"] if doc else ["1"]
        self.loaded[name] = {str(v) for v in versions}

    async def unload_model(self, name: str) -> None:
        self.unloads.append(name)
        self.loaded.pop(name, None)

    async def model_ready(self, name: str, version: str) -> bool:
        return version in self.loaded.get(name, set())

    async def model_memory_bytes(self, name: str, version: str) -> int | None:
        return self.memory_bytes

    async def infer(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError

    async def metrics(self) -> dict[str, Any]:
        return {}

    async def aclose(self) -> None:
        return None


class Gpus:
    """NVML readings whose used memory grows by ``step`` MiB on every read after a load."""

    def __init__(self) -> None:
        self.used = [10_000, 20_000]
        self.engine: Engine | None = None

    def read(self) -> list[GpuInfo]:
        return [
            GpuInfo(index=i, uuid=f"GPU-{i}", name="L4", memory_total_mb=24_000, memory_used_mb=u)
            for i, u in enumerate(self.used)
        ]


@pytest.fixture
def server() -> Iterator[FileServer]:
    s = FileServer()
    yield s
    s.close()


class Rig:
    def __init__(self, tmp_path: Path, server: FileServer) -> None:
        self.server = server
        self.repo = tmp_path / "repo"
        self.repo.mkdir()
        self.cache = ContentCache(tmp_path / "state" / "cache")
        self.downloader = Downloader(self.cache, retry_delay_s=0.01, quarantine_s=0)
        self.engine = Engine(self.repo)
        self.gpus = Gpus()
        self.manager = ModelManager(
            self.engine,
            self.repo,
            downloader=self.downloader,
            state_dir=tmp_path / "state",
            read_gpus=self.gpus.read,
            gpu_map=lambda: self.gpu_map,
            busy=lambda: self.busy,
            drain_settle_s=0.0,
        )
        self.busy: set[tuple[str, str]] = set()  # (model, version) of jobs in flight
        self.gpu_map: dict[int, int] | None = None  # host GPU index -> Triton's

    def version(
        self, name: str, version: str, *, body: bytes | None = None, gpus: list[int] | None = None
    ) -> DesiredModel:
        config = self.server.add(f"{name}/{version}/config.pbtxt", CONFIG, "config.pbtxt")
        model = self.server.add(
            f"{name}/{version}/model.py",
            body or f"# {name} v{version}\n".encode(),
            f"{version}/model.py",
        )
        return DesiredModel(name=name, version=version, files=[config, model], gpus=gpus)

    def states(self) -> dict[tuple[str, str], tuple[str, str | None]]:
        return {(s.name, s.version): (s.state, s.reason) for s in self.manager.states()}

    async def apply(self, desired: list[DesiredModel] | None) -> bool:
        self.manager.set_desired(desired)
        return await self.manager.reconcile()


@pytest.fixture
async def rig(tmp_path: Path, server: FileServer) -> Any:
    r = Rig(tmp_path, server)
    yield r
    await r.downloader.aclose()


async def test_a_desired_version_is_synced_loaded_and_reported(rig: Rig) -> None:
    assert await rig.apply([rig.version("m", "1")])
    assert rig.states() == {("m", "1"): ("READY", None)}
    assert [(r.name, r.version) for r in rig.manager.ready_refs()] == [("m", "1")]
    name, override = rig.engine.loads[-1]
    assert name == "m" and override is not None
    assert override["version_policy"] == {"specific": {"versions": ["1"]}}  # int64: a string
    assert "instance_group" not in override  # no GPU chosen: Triton's own placement
    assert rig.engine.seen_files["m"] == ["1/model.py", "config.pbtxt"]
    assert (rig.repo / "m" / "1" / "model.py").read_bytes() == b"# m v1\n"

    # the same list again (new presigned URLs every heartbeat): nothing to do
    loads = len(rig.engine.loads)
    assert await rig.apply([rig.version("m", "1")])
    assert len(rig.engine.loads) == loads


async def test_gpu_pinning_and_measured_memory(rig: Rig) -> None:
    rig.gpu_map = {1: 0}  # the host's GPU 1 is Triton's GPU 0

    real_load = rig.engine.load_model

    async def load(name: str, config: str | None = None) -> None:
        await real_load(name, config)
        rig.gpus.used[1] += 1_536  # the load took 1.5 GiB on GPU 1
        rig.gpus.used[0] += 999  # someone else's process on GPU 0: not counted

    rig.engine.load_model = load  # type: ignore[method-assign]
    assert await rig.apply([rig.version("m", "1", gpus=[1])])
    _, override = rig.engine.loads[-1]
    assert override is not None
    assert override["instance_group"] == [{"count": 1, "kind": "KIND_GPU", "gpus": [0]}]
    (state,) = rig.manager.states()
    assert state.memory_mb == 1_536  # NVML before/after on the chosen GPU

    rig.engine.memory_bytes = 700 * 2**20  # Triton's statistics report memory_usage
    assert await rig.apply([rig.version("m", "1", gpus=[1]), rig.version("m", "2", gpus=[1])])
    by_version = {s.version: s.memory_mb for s in rig.manager.states()}
    assert by_version == {"1": 1_536, "2": 700}


async def test_a_corrupted_object_never_becomes_ready(rig: Rig) -> None:
    good = rig.version("m", "1")
    rig.server.objects["/m/1/model.py"] = b"# m v1 tampered in the bucket\n"[:14]  # other bytes
    assert not await rig.apply([good])
    ((state, reason),) = rig.states().values()
    assert state == "UNAVAILABLE" and reason is not None and "mismatch" in reason
    assert rig.engine.loads == [] and not (rig.repo / "m").exists()
    assert rig.manager.ready_refs() == []

    # same size, other bytes (sha256 mismatch)
    rig.server.objects["/m/1/model.py"] = b"# m v2\n"
    assert not await rig.manager.reconcile()
    ((state, reason),) = rig.states().values()
    assert state == "UNAVAILABLE" and reason is not None and "sha256 mismatch" in reason
    assert rig.engine.loads == [] and rig.cache.digests() == {good.files[0].sha256}

    rig.server.objects["/m/1/model.py"] = b"# m v1\n"  # repaired: the retry succeeds
    assert await rig.manager.reconcile()
    assert rig.states() == {("m", "1"): ("READY", None)}


async def test_a_tampered_cached_file_is_refused(rig: Rig) -> None:
    desired = rig.version("m", "1")
    assert await rig.apply([desired])
    cached = rig.cache.path(desired.files[1].sha256)
    os.chmod(cached, 0o644)
    cached.write_bytes(b"# evil!\n"[:7])  # same size, other bytes (the repository's hard
    # link changed with it). Triton restarts: the reload re-verifies every cached file
    rig.manager.mark_unavailable("Triton exited")
    requests = len(rig.server.requests)
    assert await rig.manager.load_all()  # Triton is fine; the model is not loaded from it
    assert rig.states()[("m", "1")][0] == "UNAVAILABLE"
    assert "failed verification" in str(rig.states()[("m", "1")][1])
    assert rig.manager._changed.is_set()  # the sync loop fetches it again
    assert await rig.manager.reconcile()
    assert len(rig.server.requests) == requests + 1  # the tampered file was fetched again
    assert (rig.repo / "m" / "1" / "model.py").read_bytes() == b"# m v1\n"
    assert rig.cache.path(desired.files[1].sha256).read_bytes() == b"# m v1\n"

    # and when the bucket copy is bad too, the model does not become READY
    os.chmod(cached, 0o644)
    cached.write_bytes(b"# evil \n")
    rig.server.objects["/m/1/model.py"] = b"# evil \n"
    rig.manager.mark_unavailable("Triton exited")
    # the model's own fault: the supervisor need not restart Triton again for it
    assert await rig.manager.load_all()
    assert rig.states()[("m", "1")][0] == "UNAVAILABLE"
    assert not await rig.manager.reconcile()


async def test_triton_failure_reason_is_reported(rig: Rig) -> None:
    rig.engine.fail["m"] = "failed to load 'm' version 1: Internal: ModuleNotFoundError: torch"
    assert not await rig.apply([rig.version("m", "1")])
    assert rig.states() == {
        ("m", "1"): (
            "UNAVAILABLE",
            "failed to load 'm' version 1: Internal: ModuleNotFoundError: torch",
        )
    }
    assert await rig.manager.load_all()  # refused by Triton: no reason to restart Triton

    async def unreachable(name: str, config: str | None = None) -> None:
        raise InferError("StatusCode.UNAVAILABLE: Connection refused", transient=True)

    rig.engine.load_model = unreachable  # type: ignore[method-assign]
    assert not await rig.manager.load_all()  # Triton itself is gone: the supervisor acts


async def test_rollout_and_unload(rig: Rig) -> None:
    v1, v2 = rig.version("m", "1"), rig.version("m", "2")
    other = rig.version("o", "5")
    assert await rig.apply([v1, other])
    assert await rig.apply([v1, v2, other])  # both versions served during the switch
    assert rig.states()[("m", "1")][0] == rig.states()[("m", "2")][0] == "READY"
    _, override = rig.engine.loads[-1]
    assert override is not None and override["version_policy"]["specific"]["versions"] == ["1", "2"]
    assert rig.engine.seen_files["m"] == ["1/model.py", "2/model.py", "config.pbtxt"]

    assert await rig.apply([v2, other])  # v1 leaves through the version policy, no unload
    assert set(rig.states()) == {("m", "2"), ("o", "5")}
    assert rig.engine.unloads == []
    assert rig.engine.seen_files["m"] == ["2/model.py", "config.pbtxt"]

    assert await rig.apply([v2])  # o no longer desired: unloaded, its directory removed
    assert rig.engine.unloads == ["o"]
    assert set(rig.states()) == {("m", "2")}
    assert sorted(p.name for p in rig.repo.iterdir()) == ["m"]

    assert rig.cache.digests() == {f.sha256 for f in v2.files}  # o's and v1's evicted

    assert await rig.apply([])
    assert rig.engine.unloads == ["o", "m"] and rig.states() == {}
    assert list(rig.repo.iterdir()) == []
    assert rig.cache.digests() == set()


async def test_expired_urls_recover_with_the_next_heartbeat(rig: Rig) -> None:
    desired = rig.version("m", "1")
    rig.server.refuse.add("/m/1/model.py")
    assert not await rig.apply([desired])
    (state, reason) = rig.states()[("m", "1")]
    assert state == "UNAVAILABLE" and reason is not None and "403" in reason
    rig.server.refuse.clear()
    rig.manager.set_desired([desired])  # same list, fresh URLs: no change to act on ...
    assert await rig.manager.reconcile()  # ... but the retry uses them
    assert rig.states() == {("m", "1"): ("READY", None)}


async def test_unmanaged_and_local_models_are_left_alone(rig: Rig, tmp_path: Path) -> None:
    local = rig.repo / "local"
    (local / "1").mkdir(parents=True)
    (local / "config.pbtxt").write_text('name: "local"\nbackend: "python"\n')
    (local / "1" / "model.py").write_text("# local\n")
    assert await rig.manager.load_all()  # no desired list yet: every local model
    assert rig.states() == {("local", "1"): ("READY", None)}

    unmanaged = DesiredModel(name="local", version="1", managed=False)
    assert await rig.apply([unmanaged, rig.version("m", "1")])
    assert set(rig.states()) == {("local", "1"), ("m", "1")}
    assert rig.engine.unloads == []
    assert await rig.apply([rig.version("m", "1")])  # not listed, but never synced: kept
    assert local.exists() and ("local", "1") in rig.states()

    assert await rig.apply(None)  # back to the local repository: everything in it
    assert {k for k, v in rig.states().items() if v[0] == "READY"} == {("local", "1"), ("m", "1")}


async def test_the_sync_loop_follows_heartbeats(rig: Rig) -> None:
    rig.manager._retry_initial_s = 0.05
    stop = asyncio.Event()
    loop = asyncio.create_task(rig.manager.run(stop))
    try:
        rig.server.refuse.add("/m/1/model.py")
        rig.manager.set_desired([rig.version("m", "1")])
        async with asyncio.timeout(10):
            while rig.states().get(("m", "1"), ("", None))[0] != "UNAVAILABLE":
                await asyncio.sleep(0.01)
        rig.server.refuse.clear()  # retried with backoff until it works
        async with asyncio.timeout(10):
            while rig.states().get(("m", "1"), ("", None))[0] != "READY":
                await asyncio.sleep(0.01)
        rig.manager.set_desired([])
        async with asyncio.timeout(10):
            while rig.states():
                await asyncio.sleep(0.01)
    finally:
        stop.set()
        await asyncio.wait_for(loop, 5)
    assert rig.engine.unloads == ["m"]


async def test_no_url_and_nothing_cached_is_unavailable(rig: Rig) -> None:
    cfg = DesiredFile(path="config.pbtxt", size=3, sha256="a" * 64, url=None)
    assert not await rig.apply([DesiredModel(name="n", version="1", files=[cfg])])
    state, reason = rig.states()[("n", "1")]
    assert state == "UNAVAILABLE" and reason is not None and "no download URL" in reason


async def test_the_heartbeat_answer_reaches_the_manager(rig: Rig) -> None:
    from gpufleet.wire import HeartbeatResponse, RunnerConfig

    from runner.heartbeat import Heartbeat
    from runner.state import RunnerState

    class Jobs:
        def cancel(self, ids: list[str]) -> None: ...

    hb = Heartbeat(RunnerState(), None, None, None, rig.engine, rig.manager, Jobs())  # type: ignore[arg-type]
    desired = [rig.version("m", "1")]
    hb.apply(HeartbeatResponse(config=RunnerConfig(), desired_models=desired))
    assert rig.manager.syncing and rig.manager._changed.is_set()
    assert await rig.manager.reconcile()
    assert rig.states() == {("m", "1"): ("READY", None)}
    hb.apply(HeartbeatResponse(config=RunnerConfig()))  # no deployments: the local repository
    assert not rig.manager.syncing


async def test_a_triton_restart_is_recovered_while_a_download_runs(rig: Rig) -> None:
    v1, v2 = rig.version("m", "1"), rig.version("m", "2")
    assert await rig.apply([v1])
    rig.server.delay["/m/2/model.py"] = 2.0  # a big file still arriving
    rig.manager.set_desired([v1, v2])
    sync = asyncio.create_task(rig.manager.reconcile())
    async with asyncio.timeout(5):
        while rig.states().get(("m", "2"), ("", None)) != ("LOADING", "downloading"):
            await asyncio.sleep(0.01)
    rig.manager.mark_unavailable("Triton exited")
    started = asyncio.get_running_loop().time()
    assert await rig.manager.load_all()  # v1 reloaded from the cache, not after v2 arrives
    assert asyncio.get_running_loop().time() - started < 1.0
    assert rig.states()[("m", "1")] == ("READY", None) and not sync.done()
    assert await sync
    assert rig.states() == {("m", "1"): ("READY", None), ("m", "2"): ("READY", None)}


async def test_triton_statistics_memory_usage_is_read_from_gpu_entries() -> None:
    from runner.triton_client import TritonClient

    engine = TritonClient(
        protocol="grpc", http_port=1, grpc_port=1, metrics_port=1, repository_key="k"
    )
    calls: list[tuple[Any, ...]] = []

    class Stats:
        def __init__(self, doc: dict[str, Any]) -> None:
            self.doc = doc

        async def get_inference_statistics(self, *args: Any, **kwargs: Any) -> Any:
            calls.append((args, kwargs))
            return self.doc

        async def close(self) -> None: ...

    usage = [
        {"type": "GPU", "id": 0, "byte_size": "314572800"},  # gRPC JSON: uint64 as a string
        {"type": "GPU", "id": 1, "byte_size": "104857600"},
        {"type": "CPU", "id": 0, "byte_size": "999999999"},
    ]
    engine._client = Stats({"model_stats": [{"name": "m", "version": "1", "memory_usage": usage}]})
    try:
        assert await engine.model_memory_bytes("m", "1") == 400 * 2**20
        assert calls[-1] == (("m", "1"), {"as_json": True})
        engine._client = Stats({"model_stats": [{"name": "m", "version": "1"}]})
        assert await engine.model_memory_bytes("m", "1") is None  # the backend reports none
    finally:
        await engine.aclose()


async def test_a_direct_switch_makes_before_it_breaks_and_drains(rig: Rig) -> None:
    v1, v2, o = rig.version("m", "1"), rig.version("m", "2"), rig.version("o", "5")
    assert await rig.apply([v1, o])
    rig.busy = {("m", "1"), ("o", "5")}  # a job of each is running
    rig.manager.set_desired([v2])  # v1 → v2 in one step, o no longer wanted
    sync = asyncio.create_task(rig.manager.reconcile())
    async with asyncio.timeout(5):
        while rig.states().get(("o", "5")) != ("UNLOADING", "draining"):
            await asyncio.sleep(0.01)
    await asyncio.sleep(0.3)
    assert not sync.done() and "o" in rig.engine.loaded  # o waits for its job
    assert [(r.name, r.version) for r in rig.manager.ready_refs()] == [("m", "1")]
    rig.busy.discard(("o", "5"))
    async with asyncio.timeout(5):
        while rig.states().get(("m", "2")) != ("READY", None):
            await asyncio.sleep(0.01)
    # v2 loaded next to v1; v1 no longer offered for leases but still loaded for its job
    assert rig.engine.loaded["m"] == {"1", "2"} and "o" not in rig.engine.loaded
    assert rig.states()[("m", "1")] == ("UNLOADING", "draining")
    assert [(r.name, r.version) for r in rig.manager.ready_refs()] == [("m", "2")]
    await asyncio.sleep(0.3)
    assert not sync.done()
    rig.busy.clear()  # the v1 job finished
    assert await asyncio.wait_for(sync, 5)
    assert rig.engine.loaded["m"] == {"2"} and rig.states() == {("m", "2"): ("READY", None)}
    assert rig.engine.unloads == ["o"]  # m's v1 left through the version policy


async def test_a_broken_new_version_leaves_the_old_one_serving(rig: Rig) -> None:
    v1 = rig.version("m", "1")
    assert await rig.apply([v1])
    v2 = rig.version("m", "2")
    rig.server.objects["/m/2/model.py"] = b"not what was uploaded"
    assert not await rig.apply([v2])
    assert rig.states()[("m", "1")] == ("READY", None)  # still served
    assert rig.states()[("m", "2")][0] == "UNAVAILABLE"
    assert rig.engine.loaded["m"] == {"1"}

    rig.server.objects["/m/2/model.py"] = b"# m v2\n"  # fixed in the bucket
    rig.engine.fail["m"] = "failed to load 'm' version 2: Internal: SyntaxError"
    assert not await rig.manager.reconcile()  # Triton refuses v2: v1 still served
    assert rig.states()[("m", "1")][0] == "READY"
    del rig.engine.fail["m"]
    assert await rig.manager.reconcile()  # retried: v2 loads, then v1 is drained
    assert rig.states() == {("m", "2"): ("READY", None)} and rig.engine.loaded["m"] == {"2"}
