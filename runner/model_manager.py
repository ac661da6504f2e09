"""Which models are loaded in Triton, and in which state (what the runner may lease).

Two modes, chosen by each heartbeat answer (``set_desired``):

- ``desired_models`` is None (no deployment governs this runner): every model of the local
  repository directory is loaded, as before model sync existed.
- a list: the runner serves exactly those model versions. Managed entries are downloaded and
  verified (``runner.model_sync``), materialised into the repository directory atomically and
  loaded through Triton's repository API with a config override (the desired versions, and
  the GPUs the control plane chose); managed models no longer listed are unloaded and their
  directories removed. Unmanaged entries (``managed: false``) are left as the runner has
  them (loaded from the local repository when they are not loaded yet).

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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gpufleet.wire import DesiredFile, DesiredModel, GpuInfo, ModelRef, ModelState

from runner.backends.base import InferenceEngine, InferError
from runner.model_repo import LocalModel, scan_repository
from runner.model_sync import (
    CONFIG_FILE,
    Downloader,
    DownloadError,
    files_of_version,
    load_config,
    materialise,
    remove_model_dir,
)

log = logging.getLogger(__name__)
MANIFEST = "synced-models.json"


@dataclass
class _Want:
    """What one model name should be, from the desired list."""

    name: str
    versions: tuple[str, ...]
    gpus: tuple[int, ...] | None
    files: dict[str, tuple[DesiredFile, ...]]
    managed: bool = True
    digest_key: tuple[tuple[str, str, str, int], ...] = ()


def _installation(
    versions: tuple[str, ...],
    gpus: tuple[int, ...] | None,
    digest_key: tuple[tuple[str, str, str, int], ...],
    cached: dict[str, dict[str, Path]],
    specs: dict[str, tuple[DesiredFile, ...]],
) -> _Installed:
    """The model directory of ``versions``: config.pbtxt of the newest, each version's files."""
    files: dict[str, Path] = {}
    digests: dict[str, tuple[str, int]] = {}
    if versions:
        files[CONFIG_FILE] = cached[versions[-1]][CONFIG_FILE]
    for v in versions:
        files.update({p: f for p, f in cached[v].items() if p != CONFIG_FILE})
        for spec in specs[v]:
            if spec.path != CONFIG_FILE or v == versions[-1]:
                digests[spec.path] = (spec.sha256, spec.size)
    return _Installed(versions, gpus, digest_key, files, digests)


def _merge(old: _Installed, new: _Installed, keep: set[str]) -> _Installed:
    """``new`` plus the versions ``keep`` of ``old`` (config.pbtxt of ``new``)."""
    versions = tuple(sorted(set(new.versions) | keep, key=int))
    files = dict(new.files)
    digests = dict(new.digests)
    for path, f in old.files.items():
        if path.split("/", 1)[0] in keep:
            files[path] = f
            digests[path] = old.digests[path]
    return _Installed(versions, new.gpus, new.digest_key, files, digests)


@dataclass
class _Installed:
    """What was last put into the repository for one model, and loaded."""

    versions: tuple[str, ...]
    gpus: tuple[int, ...] | None
    digest_key: tuple[tuple[str, str, str, int], ...]
    files: dict[str, Path]  # path in the model directory -> cached file
    digests: dict[str, tuple[str, int]]  # path -> (sha256, size)


def _group(desired: Sequence[DesiredModel]) -> dict[str, _Want]:
    """Desired entries by model name (several versions of one name load as one model)."""
    by_name: dict[str, list[DesiredModel]] = {}
    for d in desired:
        by_name.setdefault(d.name, []).append(d)
    out = {}
    for name, entries in by_name.items():
        versions = tuple(sorted({d.version for d in entries}, key=int))
        gpu_sets = [d.gpus for d in entries if d.gpus is not None]
        gpus = tuple(sorted({g for s in gpu_sets for g in s})) if gpu_sets else None
        files = {d.version: tuple(files_of_version(d.files, d.version)) for d in entries}
        key = tuple(sorted((v, f.path, f.sha256, f.size) for v, fs in files.items() for f in fs))
        out[name] = _Want(name, versions, gpus, files, all(d.managed for d in entries), key)
    return out


def _fingerprint(desired: Sequence[DesiredModel] | None) -> Any:
    """What decides the work to do (presigned URLs change every heartbeat: not in it)."""
    if desired is None:
        return None
    return sorted(
        (
            d.name,
            d.version,
            tuple(d.gpus or ()),
            d.gpus is None,
            d.managed,
            *sorted((f.path, f.sha256, f.size) for f in d.files),
        )
        for d in desired
    )


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
        gpu_map: dict[int, int] | None = None,
        retry_initial_s: float = 2.0,
        retry_max_s: float = 60.0,
        busy: Callable[[], set[tuple[str, str]]] | None = None,
        drain_settle_s: float = 25.0,
        drain_max_s: float = 600.0,
    ) -> None:
        self._engine = engine
        self._repository = Path(repository).expanduser()
        self._states: dict[tuple[str, str], ModelState] = {}
        self._downloader = downloader
        self._read_gpus = read_gpus  # () -> list[GpuInfo] (blocking: NVML)
        self.gpu_map = gpu_map  # host GPU index -> Triton's (None: the same)
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
        self._installed: dict[str, _Installed] = {}
        self._unreachable = False  # a load failed because Triton did not answer
        # (name, version) -> (Triton's load time in ms, when it became READY: epoch s); sent
        # with each job's timings so the control plane marks the jobs that waited for a load
        self.loads: dict[tuple[str, str], tuple[float, float]] = {}
        self._manifest_path = state_dir / MANIFEST if state_dir is not None else None
        self._synced: set[str] = self._read_manifest()

    # ------------------------------------------------------------------ reads
    def states(self) -> list[ModelState]:
        return list(self._states.values())

    def ready_refs(self) -> list[ModelRef]:
        """The (name, version) pairs READY in Triton: what the lease asks for."""
        return [
            ModelRef(name=s.name, version=s.version)
            for s in self._states.values()
            if s.state == "READY"
        ]

    @property
    def syncing(self) -> bool:
        """Whether the control plane's desired list governs (else: the local repository)."""
        return self._desired is not None

    def mark_unavailable(self, reason: str) -> None:
        for key, s in self._states.items():
            self._states[key] = s.model_copy(update={"state": "UNAVAILABLE", "reason": reason})
        self._loaded.clear()  # Triton is gone: everything must be loaded again

    # ------------------------------------------------------------------ desired list
    def set_desired(self, desired: list[DesiredModel] | None) -> None:
        """The heartbeat answer's ``desired_models`` (newest URLs kept; work when it changed)."""
        self._desired = list(desired) if desired is not None else None
        fingerprint = _fingerprint(desired)
        if fingerprint != self._fingerprint:
            self._fingerprint = fingerprint
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
        return all(s.state == "READY" for s in self._states.values())

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
            for model in scan_repository(self._repository):
                await self._load_local(model)
        return self._all_ready()

    async def load_missing(self) -> bool:
        """Retry the models that are not READY; True when every model is READY."""
        if self._desired is not None:
            return self._all_ready()  # the sync loop retries, with its backoff
        async with self._lock:
            for model in scan_repository(self._repository):
                state = self._states.get((model.name, model.version))
                if state is None or state.state != "READY":
                    await self._load_local(model)
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
                    for model in scan_repository(self._repository):
                        state = self._states.get((model.name, model.version))
                        if state is None or state.state != "READY":
                            await self._load_local(model)
                return self._all_ready()
            wanted = _group(desired)
            leaving = sorted((self._synced | set(self._loaded)) - set(wanted))
            await self._drain({k for k in self._states if k[0] in leaving})
            async with self._lock:
                for name in leaving:
                    await self._unload(name)
            for want in wanted.values():
                if want.managed:
                    await self._sync(want)
                else:
                    async with self._lock:
                        await self._keep_unmanaged(want)
            ready = all(
                self._state_of(w.name, v) == "READY" for w in wanted.values() for v in w.versions
            )
            if ready and self._downloader is not None:
                async with self._lock:
                    await self._prune_cache(wanted)
            return ready

    async def _prune_cache(self, wanted: dict[str, _Want]) -> None:
        """Evict cached files no desired version uses (the repository's hard links stay)."""
        assert self._downloader is not None
        keep = {f.sha256 for w in wanted.values() for fs in w.files.values() for f in fs}
        removed = await asyncio.to_thread(self._downloader.cache.prune, keep)
        if removed:
            log.info("model cache: %d file(s) no longer desired removed", len(removed))

    def _state_of(self, name: str, version: str) -> str | None:
        s = self._states.get((name, version))
        return s.state if s else None

    def _set(self, name: str, version: str, state: str, reason: str | None = None) -> None:
        prev = self._states.get((name, version))
        memory = prev.memory_mb if prev is not None and state == "READY" else None
        self._states[(name, version)] = ModelState(
            name=name, version=version, state=state, reason=reason, memory_mb=memory
        )

    async def _sync(self, want: _Want) -> None:
        name = want.name
        target_key = (want.versions, want.gpus, want.digest_key)
        if self._loaded.get(name) == target_key and all(
            self._state_of(name, v) == "READY" for v in want.versions
        ):
            return
        if self._downloader is None:
            for v in want.versions:
                self._set(name, v, "UNAVAILABLE", "model sync is not configured on this runner")
            return
        # 1. files: every version's into the verified cache (no lock held)
        cached: dict[str, dict[str, Path]] = {}
        for v in want.versions:
            if self._state_of(name, v) != "READY":
                self._set(name, v, "LOADING", "downloading")
            try:
                cached[v] = await self._downloader.fetch(want.files[v])
            except DownloadError as exc:
                log.error("model %s version %s: %s", name, v, exc)
                self._set(name, v, "UNAVAILABLE", f"download failed: {exc}")
            else:
                if CONFIG_FILE not in cached[v]:
                    del cached[v]
                    self._set(name, v, "UNAVAILABLE", f"{CONFIG_FILE} is not among the files")
        versions = tuple(v for v in want.versions if v in cached)
        specs = {v: want.files[v] for v in versions}
        inst = _installation(versions, want.gpus, want.digest_key, cached, specs)
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
            if any(self._state_of(name, v) != "READY" for v in versions):
                async with self._lock:
                    await self._install(name, _merge(old, inst, kept))
            if any(self._state_of(name, v) != "READY" for v in want.versions):
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
        refs = {r for r in refs if self._state_of(*r) == "READY"}
        if not refs:
            return
        for name, version in refs:
            self._set(name, version, "UNLOADING", "draining")
        loop = asyncio.get_running_loop()
        settled = loop.time() + self._drain_settle_s
        deadline = loop.time() + self._drain_max_s
        while loop.time() < deadline:
            busy = self._busy() & refs if self._busy is not None else set()
            if not busy and loop.time() >= settled:
                return
            await asyncio.sleep(0.2)
        log.warning("draining %s: jobs still running after %.0fs", sorted(refs), self._drain_max_s)

    async def _reload_installed(self, name: str, inst: _Installed) -> None:
        """After a Triton restart: the installed files re-verified, then loaded again."""
        assert self._downloader is not None
        cache = self._downloader.cache
        for path, (digest, size) in inst.digests.items():
            if await asyncio.to_thread(cache.verified, digest, size) is None:
                self._installed.pop(name, None)
                for v in inst.versions:
                    reason = f"cached {path} failed verification: downloading it again"
                    self._set(name, v, "UNAVAILABLE", reason)
                return
        await self._install(name, inst)

    async def _install(self, name: str, inst: _Installed) -> None:
        """Materialise the model directory and load it (``_lock`` held)."""
        versions = inst.versions
        # the directory (config.pbtxt of the newest version) swapped in atomically; rebuilt
        # before every load (hard links: cheap), so only just-verified files reach Triton
        try:
            await asyncio.to_thread(materialise, self._repository, name, inst.files)
        except (OSError, ValueError) as exc:
            for v in versions:
                self._set(name, v, "UNAVAILABLE", f"cannot write the model directory: {exc}")
            return
        if name not in self._synced:
            self._synced.add(name)
            self._write_manifest()
        config_text = await asyncio.to_thread(inst.files[CONFIG_FILE].read_text)
        try:
            override = load_config(config_text, name, versions, self._triton_gpus(inst.gpus))
        except Exception as exc:  # a config Triton's protobuf cannot parse
            for v in versions:
                self._set(name, v, "UNAVAILABLE", f"bad {CONFIG_FILE}: {exc}")
            return
        self._installed[name] = inst
        previously = {v for v in versions if self._state_of(name, v) == "READY"}
        for v in versions:
            if v not in previously:
                self._set(name, v, "LOADING")
        await self._load(name, versions, previously, inst.gpus, override)
        if all(self._state_of(name, v) == "READY" for v in versions):
            self._loaded[name] = (versions, inst.gpus, inst.digest_key)

    async def _load(
        self,
        name: str,
        versions: tuple[str, ...],
        previously: set[str],
        gpus: tuple[int, ...] | None,
        override: str,
    ) -> None:
        before = await self._gpu_used_mb(gpus)
        started = time.monotonic()
        error = None
        try:
            await self._engine.load_model(name, config=override)
        except InferError as exc:
            error = str(exc)
            self._unreachable = self._unreachable or exc.transient
            log.error("loading model %s failed: %s", name, error)
        load_ms = (time.monotonic() - started) * 1000
        after = await self._gpu_used_mb(gpus)
        new = [v for v in versions if v not in previously]
        nvml_mb = None
        if before is not None and after is not None and new:
            nvml_mb = max(after - before, 0) // len(new)
        for v in versions:
            ready = await self._engine.model_ready(name, v)
            if not ready:
                reason = error or f"version {v} not ready after load"
                self._set(name, v, "UNAVAILABLE", reason)
                continue
            memory = self._states[(name, v)].memory_mb if v in previously else None
            if v in new:
                memory = await self._triton_memory_mb(name, v)
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

    async def _keep_unmanaged(self, want: _Want) -> None:
        """A model no deployment governs: as the runner has it (local repository)."""
        local = {m.name: m for m in scan_repository(self._repository)}
        model = local.get(want.name)
        if model is None:
            return
        state = self._states.get((model.name, model.version))
        if state is None or state.state != "READY":
            await self._load_local(model)

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

    # ------------------------------------------------------------------ local mode
    async def _load_local(self, model: LocalModel) -> None:
        for key in [k for k in self._states if k[0] == model.name and k[1] != model.version]:
            del self._states[key]
        self._set(model.name, model.version, "LOADING")
        started = time.monotonic()
        try:
            await self._engine.load_model(model.name)
            load_ms = (time.monotonic() - started) * 1000
            ready = await self._engine.model_ready(model.name, model.version)
        except InferError as exc:
            log.error("loading model %s failed: %s", model.name, exc)
            self._set(model.name, model.version, "UNAVAILABLE", str(exc))
            return
        if ready:
            log.info(
                "model %s version %s READY (loaded in %.0f ms)", model.name, model.version, load_ms
            )
            self._set(model.name, model.version, "READY")
            self.loads[(model.name, model.version)] = (load_ms, time.time())
        else:
            reason = f"version {model.version} not ready after load"
            log.error("model %s: %s", model.name, reason)
            self._set(model.name, model.version, "UNAVAILABLE", reason)

    # ------------------------------------------------------------------ GPUs and memory
    def _triton_gpus(self, gpus: tuple[int, ...] | None) -> list[int] | None:
        if gpus is None:
            return None
        if self.gpu_map is None:
            return list(gpus)
        return [self.gpu_map.get(g, g) for g in gpus]

    async def _gpu_used_mb(self, gpus: tuple[int, ...] | None) -> int | None:
        if self._read_gpus is None:
            return None
        try:
            readings: list[GpuInfo] = await asyncio.to_thread(self._read_gpus)
        except Exception:
            log.debug("NVML reading failed", exc_info=True)
            return None
        chosen = [g for g in readings if gpus is None or g.index in gpus]
        if not chosen:
            return None
        return sum(g.memory_used_mb for g in chosen)

    async def _triton_memory_mb(self, name: str, version: str) -> int | None:
        fn = getattr(self._engine, "model_memory_bytes", None)
        if fn is None:
            return None
        try:
            value = await fn(name, version)
        except Exception:
            log.debug("Triton statistics of %s failed", name, exc_info=True)
            return None
        return int(value) // 2**20 if value else None

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
