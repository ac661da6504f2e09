"""Which models are loaded in Triton, and in which state (what the runner may lease).

Two modes, chosen by each heartbeat answer (``set_desired``):

- ``desired_models`` is None (no deployment governs this runner): every model of the local
  repository directory is loaded, as before model sync existed.
- a list: the runner serves exactly those model versions. Managed entries are downloaded and
  verified (``runner.model_download``), materialised into the repository directory
  atomically (``runner.model_repo``) and loaded through Triton's repository API with a
  config override (``runner.triton_config``: the desired versions, and the GPUs the control
  plane chose); managed models no longer listed are unloaded and their directories removed.
  Unmanaged entries (``managed: false``) are left as the runner has them (loaded from the
  local repository when they are not loaded yet).

Where the pieces live: the install plan (``runner.model_plan``, pure), the state table
(``runner.model_states``), the memory probe (``runner.model_memory``), local mode
(``runner.local_models``: one loop for every local load); this module is the synced mode and
the orchestration (the sync loop, locks, drains, the manifest of synced directories).

States (``ModelState`` per name and version, sent with every heartbeat): ``LOADING`` (with
``reason`` "downloading" while files arrive), ``READY``, ``UNAVAILABLE`` with the reason
(Triton's message, a failed download, a sha256 mismatch). ``memory_mb`` is the GPU memory
the load took: Triton's statistics ``memory_usage`` where the backend reports it, else the
NVML reading of the model's GPUs before and after the load.

A version that leaves (rollout, or the model is no longer desired) is drained first: the
new versions load next to it, it is reported ``UNLOADING`` (no lease asks for it), and it
is dropped only when no job of it runs and a lease poll that still offered it has come
back (``drain_settle_s``).

Every load, unload and directory swap runs under one lock: a model directory is never
replaced while Triton loads it. Downloads run outside that lock, so a Triton restart is
recovered (``load_all``: what was installed, files re-verified) while a big model arrives.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from gpufleet.wire import DesiredModel, ModelRef, ModelState

from runner.backends.base import InferenceEngine, InferError
from runner.local_models import LocalModels
from runner.model_download import Downloader, DownloadError
from runner.model_memory import MemoryProbe
from runner.model_plan import Installed, Want, fingerprint, group_desired, installation, merge
from runner.model_repo import materialise, remove_model_dir
from runner.model_states import ModelStates
from runner.triton_config import CONFIG_FILE, load_config

log = logging.getLogger(__name__)
MANIFEST = "synced-models.json"


class ModelManager:
    """Loads the desired models (or, without a desired list, every local model)."""

    def __init__(
        self,
        engine: InferenceEngine,
        repository: Path,
        *,
        downloader: Downloader | None = None,
        state_dir: Path | None = None,
        read_gpus: Any = None,
        gpu_map: Callable[[], dict[int, int] | None] | None = None,
        retry_initial_s: float = 2.0,
        retry_max_s: float = 60.0,
        busy: Callable[[], set[tuple[str, str]]] | None = None,
        drain_settle_s: float = 25.0,
        drain_max_s: float = 600.0,
    ) -> None:
        self._engine = engine
        self._repository = Path(repository).expanduser()
        self._states = ModelStates()
        self._downloader = downloader
        self._memory = MemoryProbe(engine, read_gpus, gpu_map)  # () -> list[GpuInfo]: NVML
        self._lock = asyncio.Lock()
        self._desired: list[DesiredModel] | None = None
        self._fingerprint: Any = None
        self._changed = asyncio.Event()
        self._retry_initial_s = retry_initial_s
        self._retry_max_s = retry_max_s
        # draining a version before Triton drops it: (name, version) of the jobs in flight,
        # and how long a lease poll that still offered it may take to come back
        self._busy = busy
        self._drain_settle_s = drain_settle_s
        self._drain_max_s = drain_max_s
        self._reconciling = asyncio.Lock()  # one reconcile at a time (downloads outside _lock)
        # model name -> what is loaded in Triton (versions, GPUs, file digests)
        self._loaded: dict[str, tuple[Any, ...]] = {}
        # model name -> what was last installed (reloaded after a Triton restart)
        self._installed: dict[str, Installed] = {}
        self._unreachable = False  # a load failed because Triton did not answer
        # (name, version) -> (Triton's load time in ms, when it became READY: epoch s); sent
        # with each job's timings so the control plane marks the jobs that waited for a load
        self.loads: dict[tuple[str, str], tuple[float, float]] = {}
        self._local = LocalModels(engine, self._repository, self._states, self.loads)
        self._manifest_path = state_dir / MANIFEST if state_dir is not None else None
        self._synced: set[str] = self._read_manifest()

    # ------------------------------------------------------------------ reads
    def states(self) -> list[ModelState]:
        return list(self._states.values())

    def ready_refs(self) -> list[ModelRef]:
        """The (name, version) pairs READY in Triton: what the lease asks for."""
        return self._states.ready_refs()

    @property
    def syncing(self) -> bool:
        """Whether the control plane's desired list governs (else: the local repository)."""
        return self._desired is not None

    def mark_unavailable(self, reason: str) -> None:
        self._states.mark_unavailable(reason)
        self._loaded.clear()  # Triton is gone: everything must be loaded again

    # ------------------------------------------------------------------ desired list
    def set_desired(self, desired: list[DesiredModel] | None) -> None:
        """The heartbeat answer's ``desired_models`` (newest URLs kept; work when it changed)."""
        self._desired = list(desired) if desired is not None else None
        new = fingerprint(desired)
        if new != self._fingerprint:
            self._fingerprint = new
            self._changed.set()

    async def run(self, stop: asyncio.Event) -> None:
        """Reconcile whenever the desired list changes; retry failures with backoff."""
        delay = self._retry_initial_s
        while not stop.is_set():
            await _wait_any((stop, self._changed), 3600.0 if self._all_ready() else delay)
            if stop.is_set():
                return
            changed = self._changed.is_set()
            self._changed.clear()
            if self._desired is None and not changed:
                continue  # local mode: the supervisor retries local models
            try:
                ok = await self.reconcile()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("model sync failed", exc_info=True)
                ok = False
            delay = self._retry_initial_s if ok or changed else min(delay * 2, self._retry_max_s)

    def _all_ready(self) -> bool:
        return self._states.all_ready()

    # ------------------------------------------------------------------ supervisor hooks
    async def load_all(self) -> bool:
        """(Re)load every model (after a Triton start or restart); True when all are READY.

        With a desired list: also True when what failed is the model's own fault (a bad
        download or a load Triton refused), so one broken model does not make the supervisor
        restart Triton over and over; the sync loop keeps retrying it."""
        if self._desired is not None:
            self._unreachable = False
            async with self._lock:  # no downloads here: what was installed, re-verified
                for name, inst in list(self._installed.items()):
                    await self._reload_installed(name, inst)
            self._changed.set()  # anything not installed yet: the sync loop
            return not self._unreachable
        async with self._lock:
            await self._local.load(missing_only=False)
        return self._all_ready()

    async def load_missing(self) -> bool:
        """Retry the models that are not READY; True when every model is READY."""
        if self._desired is not None:
            return self._all_ready()  # the sync loop retries, with its backoff
        async with self._lock:
            await self._local.load()
        return self._all_ready()

    # ------------------------------------------------------------------ reconcile
    async def reconcile(self) -> bool:
        """Make Triton serve the desired list; True when every desired version is READY.

        Downloads run outside the Triton lock: a Triton restart is recovered (``load_all``)
        while a big model is still arriving."""
        async with self._reconciling:
            desired = self._desired
            if desired is None:
                async with self._lock:
                    await self._local.load()
                return self._all_ready()
            wanted = group_desired(desired)
            leaving = sorted((self._synced | set(self._loaded)) - set(wanted))
            await self._drain({k for k in self._states if k[0] in leaving})
            async with self._lock:
                for name in leaving:
                    await self._unload(name)
            for want in wanted.values():
                if want.managed:
                    await self._sync(want)
                else:
                    async with self._lock:  # as the runner has it (local repository)
                        await self._local.load(only=want.name)
            ready = all(
                self._states.state_of(w.name, v) == "READY"
                for w in wanted.values()
                for v in w.versions
            )
            if ready and self._downloader is not None:
                async with self._lock:
                    await self._prune_cache(wanted)
            return ready

    async def _prune_cache(self, wanted: dict[str, Want]) -> None:
        """Evict cached files no desired version uses (the repository's hard links stay)."""
        assert self._downloader is not None
        keep = {f.sha256 for w in wanted.values() for fs in w.files.values() for f in fs}
        removed = await asyncio.to_thread(self._downloader.cache.prune, keep)
        if removed:
            log.info("model cache: %d file(s) no longer desired removed", len(removed))

    async def _sync(self, want: Want) -> None:
        name = want.name
        target_key = (want.versions, want.gpus, want.digest_key)
        if self._loaded.get(name) == target_key and all(
            self._states.state_of(name, v) == "READY" for v in want.versions
        ):
            return
        if self._downloader is None:
            for v in want.versions:
                self._states.set_state(
                    name, v, "UNAVAILABLE", "model sync is not configured on this runner"
                )
            return
        # 1. files: every version's into the verified cache (no lock held)
        cached: dict[str, dict[str, Path]] = {}
        for v in want.versions:
            if self._states.state_of(name, v) != "READY":
                self._states.set_state(name, v, "LOADING", "downloading")
            try:
                cached[v] = await self._downloader.fetch(want.files[v])
            except DownloadError as exc:
                log.error("model %s version %s: %s", name, v, exc)
                self._states.set_state(name, v, "UNAVAILABLE", f"download failed: {exc}")
            else:
                if CONFIG_FILE not in cached[v]:
                    del cached[v]
                    self._states.set_state(
                        name, v, "UNAVAILABLE", f"{CONFIG_FILE} is not among the files"
                    )
        versions = tuple(v for v in want.versions if v in cached)
        specs = {v: want.files[v] for v in versions}
        inst = installation(versions, want.gpus, want.digest_key, cached, specs)
        # make before break: versions READY now but no longer desired keep serving (loaded
        # together with the new ones) until the new ones are READY and they are drained
        old = self._installed.get(name)
        leaving = {
            v
            for (n, v), st in self._states.items()
            if n == name and v not in want.versions and st.state == "READY"
        }
        kept = leaving & set(old.versions) if old is not None else set()
        if kept and old is not None:
            if any(self._states.state_of(name, v) != "READY" for v in versions):
                async with self._lock:
                    await self._install(name, merge(old, inst, kept))
            if any(self._states.state_of(name, v) != "READY" for v in want.versions):
                return  # the old versions keep serving until the new ones are READY
        await self._drain({(name, v) for v in leaving})
        async with self._lock:
            if not versions:
                if name in self._loaded:
                    await self._unload(name, keep_states=True)
                return
            await self._install(name, inst)
            for n, v in list(self._states):
                if n == name and v not in want.versions:
                    del self._states[(n, v)]  # unloaded by the reload (version_policy)

    async def _drain(self, refs: set[tuple[str, str]]) -> None:
        """Stop offering ``refs`` in leases (UNLOADING) and wait until no job leased for them
        is running, and a lease poll that still offered them has come back."""
        refs = {r for r in refs if self._states.state_of(*r) == "READY"}
        if not refs:
            return
        for name, version in refs:
            self._states.set_state(name, version, "UNLOADING", "draining")
        loop = asyncio.get_running_loop()
        settled = loop.time() + self._drain_settle_s
        deadline = loop.time() + self._drain_max_s
        while loop.time() < deadline:
            busy = self._busy() & refs if self._busy is not None else set()
            if not busy and loop.time() >= settled:
                return
            await asyncio.sleep(0.2)
        log.warning("draining %s: jobs still running after %.0fs", sorted(refs), self._drain_max_s)

    async def _reload_installed(self, name: str, inst: Installed) -> None:
        """After a Triton restart: the installed files re-verified, then loaded again."""
        assert self._downloader is not None
        cache = self._downloader.cache
        for path, (digest, size) in inst.digests.items():
            if await asyncio.to_thread(cache.verified, digest, size) is None:
                self._installed.pop(name, None)
                for v in inst.versions:
                    reason = f"cached {path} failed verification: downloading it again"
                    self._states.set_state(name, v, "UNAVAILABLE", reason)
                return
        await self._install(name, inst)

    async def _install(self, name: str, inst: Installed) -> None:
        """Materialise the model directory and load it (``_lock`` held)."""
        versions = inst.versions
        # the directory (config.pbtxt of the newest version) swapped in atomically; rebuilt
        # before every load (hard links: cheap), so only just-verified files reach Triton
        try:
            await asyncio.to_thread(materialise, self._repository, name, inst.files)
        except (OSError, ValueError) as exc:
            for v in versions:
                self._states.set_state(
                    name, v, "UNAVAILABLE", f"cannot write the model directory: {exc}"
                )
            return
        if name not in self._synced:
            self._synced.add(name)
            self._write_manifest()
        config_text = await asyncio.to_thread(inst.files[CONFIG_FILE].read_text)
        try:
            override = load_config(config_text, name, versions, self._memory.triton_gpus(inst.gpus))
        except Exception as exc:  # a config Triton's protobuf cannot parse
            for v in versions:
                self._states.set_state(name, v, "UNAVAILABLE", f"bad {CONFIG_FILE}: {exc}")
            return
        self._installed[name] = inst
        previously = {v for v in versions if self._states.state_of(name, v) == "READY"}
        for v in versions:
            if v not in previously:
                self._states.set_state(name, v, "LOADING")
        await self._load(name, versions, previously, inst.gpus, override)
        if all(self._states.state_of(name, v) == "READY" for v in versions):
            self._loaded[name] = (versions, inst.gpus, inst.digest_key)

    async def _load(
        self,
        name: str,
        versions: tuple[str, ...],
        previously: set[str],
        gpus: tuple[int, ...] | None,
        override: str,
    ) -> None:
        before = await self._memory.gpu_used_mb(gpus)
        started = time.monotonic()
        error = None
        try:
            await self._engine.load_model(name, config=override)
        except InferError as exc:
            error = str(exc)
            self._unreachable = self._unreachable or exc.transient
            log.error("loading model %s failed: %s", name, error)
        load_ms = (time.monotonic() - started) * 1000
        after = await self._memory.gpu_used_mb(gpus)
        new = [v for v in versions if v not in previously]
        nvml_mb = None
        if before is not None and after is not None and new:
            nvml_mb = max(after - before, 0) // len(new)
        for v in versions:
            ready = await self._engine.model_ready(name, v)
            if not ready:
                reason = error or f"version {v} not ready after load"
                self._states.set_state(name, v, "UNAVAILABLE", reason)
                continue
            memory = self._states[(name, v)].memory_mb if v in previously else None
            if v in new:
                memory = await self._memory.triton_memory_mb(name, v)
                memory = memory if memory else nvml_mb
            self._states[(name, v)] = ModelState(
                name=name, version=v, state="READY", memory_mb=memory
            )
            if v in new:
                self.loads[(name, v)] = (load_ms, time.time())
        log.info(
            "model %s versions %s loaded in %.1fs (%s)",
            name,
            ",".join(versions),
            time.monotonic() - started,
            "; ".join(f"{s.version}: {s.state}" for s in self._states.values() if s.name == name),
        )

    async def _unload(self, name: str, *, keep_states: bool = False) -> None:
        for (n, v), s in list(self._states.items()):
            if n == name and not keep_states:
                self._states[(n, v)] = s.model_copy(update={"state": "UNLOADING"})
        try:
            await self._engine.unload_model(name)
        except InferError as exc:
            log.warning("unloading model %s failed: %s", name, exc)
        self._loaded.pop(name, None)
        self._installed.pop(name, None)
        if not keep_states:
            for key in [k for k in self._states if k[0] == name]:
                del self._states[key]
        if name in self._synced and not keep_states:
            await asyncio.to_thread(remove_model_dir, self._repository, name)
            self._synced.discard(name)
            self._write_manifest()
        log.info("model %s unloaded", name)

    # ------------------------------------------------------------------ manifest
    def _read_manifest(self) -> set[str]:
        if self._manifest_path is None:
            return set()
        try:
            doc = json.loads(self._manifest_path.read_text())
        except (FileNotFoundError, ValueError):
            return set()
        return {str(n) for n in doc.get("models", [])}

    def _write_manifest(self) -> None:
        """Which model directories this runner put into the repository (it may remove them)."""
        if self._manifest_path is None:
            return
        self._manifest_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self._manifest_path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"models": sorted(self._synced)}))
        tmp.replace(self._manifest_path)


async def _wait_any(events: Sequence[asyncio.Event], timeout_s: float) -> None:
    """Return when one of ``events`` is set or after ``timeout_s``."""
    waiters = [asyncio.ensure_future(e.wait()) for e in events]
    try:
        await asyncio.wait(waiters, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waiters:
            w.cancel()
