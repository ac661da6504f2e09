"""Model sync: the files of a desired model version, from the bucket into Triton's repository.

The heartbeat answer lists the model versions this runner should serve
(``HeartbeatResponse.desired_models``; ``DesiredModel.files`` carries each file's path, size,
sha256 and a presigned GET URL). This module does the file work; ``runner.model_manager``
decides what to sync, load and unload.

- ``Downloader.fetch``: every file into the content-addressed cache (``runner.cache``), several
  at once, resumable (a partial file is kept and continued with an HTTP ``Range`` request),
  each checked for size and sha256 before it enters the cache. A file already cached is
  re-hashed before it is used; a tampered one is removed and downloaded again. An object in
  the bucket whose bytes do not match raises ``DownloadError`` (never reaches Triton) and is
  not fetched again for ``quarantine_s`` (retries report the same error meanwhile).
- ``materialise``: builds the complete model directory (``config.pbtxt`` + one directory per
  version) in ``<repository>/.gpufleet-staging/`` (same file system: hard links from the cache,
  copies when linking is not possible), then swaps it into ``<repository>/<name>`` with one
  atomic ``renameat2(RENAME_EXCHANGE)`` (two renames where the kernel lacks it). The
  directory Triton may read is never written in place; the manager never swaps while a load
  of that model is in flight.
- ``load_config``: the JSON config override passed to Triton's load call: the uploaded
  ``config.pbtxt`` with ``version_policy`` set to exactly the desired versions and, when the
  control plane chose GPUs, ``instance_group { kind: KIND_GPU gpus: [...] }``.
- ``triton_gpu_map``: host GPU index (what the control plane sees in heartbeats) to the index
  Triton sees (the docker backend hands Triton the runner's GPUs in settings order).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import json
import logging
import os
import shutil
import ssl
import time
import uuid
from collections.abc import Iterable, Sequence
from pathlib import Path

import httpx
from gpufleet.wire import DesiredFile, GpuInfo

from runner.cache import CacheError, ContentCache

log = logging.getLogger(__name__)

CONFIG_FILE = "config.pbtxt"
STAGING_DIR = ".gpufleet-staging"
CHUNK = 1024 * 1024
_RENAME_EXCHANGE = 2


class DownloadError(Exception):
    """A file could not be fetched or did not match its size/sha256.

    ``corrupt``: the bytes arrived but are not the uploaded file (retrying the same object
    will not help); ``expired``: the URL was refused (a fresh one comes with the next
    heartbeat)."""

    def __init__(self, message: str, *, corrupt: bool = False, expired: bool = False) -> None:
        super().__init__(message)
        self.corrupt = corrupt
        self.expired = expired


class Downloader:
    """Parallel, resumable, verified downloads into a ``ContentCache``."""

    def __init__(
        self,
        cache: ContentCache,
        *,
        concurrency: int = 4,
        timeout_s: float = 60.0,
        retries: int = 3,
        retry_delay_s: float = 0.5,
        quarantine_s: float = 300.0,
        transport: httpx.AsyncBaseTransport | None = None,
        verify: ssl.SSLContext | bool = True,
    ) -> None:
        self.cache = cache
        self._sem = asyncio.Semaphore(concurrency)
        self._locks: dict[str, asyncio.Lock] = {}
        # digest -> (monotonic time until which it is not fetched again, why): an object
        # whose bytes did not match is not downloaded again on every retry
        self._bad: dict[str, tuple[float, str]] = {}
        self._quarantine_s = quarantine_s
        self._retries = retries
        self._retry_delay_s = retry_delay_s
        # timeout_s bounds each read/connect, not a whole (possibly huge) file
        self._http = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout_s),
            transport=transport,
            follow_redirects=False,
            verify=verify,
        )
        self.bytes_downloaded = 0
        self.resumed = 0

    async def aclose(self) -> None:
        await self._http.aclose()

    async def fetch(self, files: Sequence[DesiredFile]) -> dict[str, Path]:
        """Every file verified in the cache: ``{file.path: cached file}``.

        Raises ``DownloadError`` naming the first file that failed (the others still finish,
        so a retry resumes less)."""
        by_digest: dict[str, DesiredFile] = {}
        for f in files:
            seen = by_digest.get(f.sha256)
            if seen is not None and seen.size != f.size:
                raise DownloadError(f"{f.path}: same sha256 as {seen.path} but another size")
            by_digest.setdefault(f.sha256, f)
        results = await asyncio.gather(
            *(self._one(f) for f in by_digest.values()), return_exceptions=True
        )
        paths: dict[str, Path] = {}
        errors: list[BaseException] = []
        for f, result in zip(by_digest.values(), results, strict=True):
            if isinstance(result, BaseException):
                errors.append(result)
            else:
                paths[f.sha256] = result
        for err in errors:
            if not isinstance(err, Exception):
                raise err  # CancelledError and friends
        if errors:
            raise errors[0]
        return {f.path: paths[f.sha256] for f in files}

    async def _one(self, f: DesiredFile) -> Path:
        async with self._locks.setdefault(f.sha256, asyncio.Lock()):  # one writer per digest
            cached = await asyncio.to_thread(self.cache.verified, f.sha256, f.size)
            if cached is not None:
                return cached
            bad = self._bad.get(f.sha256)
            if bad is not None and time.monotonic() < bad[0]:
                raise DownloadError(bad[1], corrupt=True)  # not fetched again for a while
            async with self._sem:
                try:
                    return await self._download(f)
                except DownloadError as exc:
                    if exc.corrupt:
                        self._bad[f.sha256] = (time.monotonic() + self._quarantine_s, str(exc))
                    raise

    async def _download(self, f: DesiredFile) -> Path:
        if not f.url:
            raise DownloadError(f"{f.path}: no download URL (the control plane gave none)")
        part = self.cache.partial_path(f.sha256)
        last: Exception | None = None
        for attempt in range(self._retries):
            if attempt:
                await asyncio.sleep(self._retry_delay_s * 2 ** (attempt - 1))
            try:
                await self._transfer(f, part)
            except DownloadError:
                raise
            except (httpx.HTTPError, OSError) as exc:
                last = exc
                log.warning("downloading %s: %s (try %d)", f.path, exc, attempt + 1)
                continue
            try:
                return await asyncio.to_thread(self.cache.commit, f.sha256, f.size)
            except CacheError as exc:
                raise DownloadError(f"{f.path}: {exc}", corrupt=True) from exc
        raise DownloadError(f"{f.path}: {type(last).__name__}: {last}")

    async def _transfer(self, f: DesiredFile, part: Path) -> None:
        """Bring ``part`` to ``f.size`` bytes (resuming what is there)."""
        offset = await asyncio.to_thread(_partial_size, part, f.size)
        if offset == f.size:
            return
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        assert f.url is not None
        async with self._http.stream("GET", f.url, headers=headers) as resp:
            if resp.status_code == 206 and offset:
                if not _range_starts_at(resp.headers.get("content-range"), offset):
                    raise httpx.HTTPError(f"unexpected Content-Range {resp.headers!r}")
                self.resumed += 1
                mode = "ab"
            elif resp.status_code == 200:
                offset, mode = 0, "wb"
            elif resp.status_code == 416:  # our partial is longer than the object
                await asyncio.to_thread(part.unlink, missing_ok=True)
                raise DownloadError(f"{f.path}: object smaller than {offset} bytes", corrupt=True)
            elif resp.status_code in (401, 403):
                raise DownloadError(
                    f"{f.path}: download refused (HTTP {resp.status_code}; URL expired?)",
                    expired=True,
                )
            elif resp.status_code == 404:
                raise DownloadError(f"{f.path}: object not found in the bucket (HTTP 404)")
            else:
                raise httpx.HTTPError(f"{f.path}: HTTP {resp.status_code}")
            total = _object_size(resp)
            if total is not None and total != f.size:
                await asyncio.to_thread(part.unlink, missing_ok=True)
                raise DownloadError(
                    f"{f.path}: size mismatch: object has {total} bytes, expected {f.size}",
                    corrupt=True,
                )
            written = await self._write(resp, part, mode, offset, f)
        if written != f.size:  # a short body: the connection dropped; resume on the next try
            raise httpx.HTTPError(f"{f.path}: got {written} of {f.size} bytes")

    async def _write(
        self, resp: httpx.Response, part: Path, mode: str, offset: int, f: DesiredFile
    ) -> int:
        """Append the body to ``part`` (file writes in a thread, 8 MiB at a time)."""
        out = await asyncio.to_thread(open, part, mode)
        written = offset
        buf = bytearray()
        try:
            async for block in resp.aiter_bytes():  # as received: a drop keeps every byte
                written += len(block)
                if written > f.size:
                    await asyncio.to_thread(out.close)
                    await asyncio.to_thread(part.unlink, missing_ok=True)
                    raise DownloadError(
                        f"{f.path}: size mismatch: object is larger than {f.size} bytes",
                        corrupt=True,
                    )
                buf += block
                self.bytes_downloaded += len(block)
                if len(buf) >= 8 * CHUNK:
                    await asyncio.to_thread(out.write, bytes(buf))
                    buf.clear()
        finally:
            if not out.closed:
                if buf:
                    await asyncio.to_thread(out.write, bytes(buf))
                await asyncio.to_thread(out.close)
        return written


def _object_size(resp: httpx.Response) -> int | None:
    """The whole object's size as the server states it (Content-Range total, else length)."""
    if resp.status_code == 206:
        total = (resp.headers.get("content-range") or "").rpartition("/")[2]
        return int(total) if total.isdigit() else None
    length = resp.headers.get("content-length")
    return int(length) if length and length.isdigit() else None


def _partial_size(part: Path, size: int) -> int:
    """Bytes of a partial download to resume from (a too-long one is dropped)."""
    try:
        offset = part.stat().st_size
    except FileNotFoundError:
        return 0
    if offset > size:
        part.unlink()
        return 0
    return offset


def _range_starts_at(content_range: str | None, offset: int) -> bool:
    """``Content-Range: bytes <start>-<end>/<total>`` starts at ``offset``."""
    if not content_range or not content_range.startswith("bytes "):
        return False
    start = content_range[6:].split("-", 1)[0]
    return start.isdigit() and int(start) == offset


# --------------------------------------------------------------------------- the directory


def _safe_relative(path: str) -> Path:
    """A model file's path as a relative path that cannot leave the model directory."""
    segments = path.split("/")
    if (
        path.startswith("/")
        or "\\" in path
        or any(seg in ("", ".", "..") for seg in segments)
        or any(ord(c) < 32 for c in path)
    ):
        raise ValueError(f"unsafe path in model files: {path!r}")
    return Path(*segments)


def _place(src: Path, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dest)
    except OSError:  # another file system, or links not allowed: copy
        shutil.copyfile(src, dest)
        os.chmod(dest, 0o444)


def _renameat2_exchange(a: Path, b: Path) -> bool:
    """Atomically exchange two paths (Linux renameat2); False when unsupported."""
    libc_name = ctypes.util.find_library("c")
    if libc_name is None:
        return False
    libc = ctypes.CDLL(libc_name, use_errno=True)
    fn = getattr(libc, "renameat2", None)
    if fn is None:
        return False
    at_fdcwd = -100
    rc = fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), _RENAME_EXCHANGE)
    if rc == 0:
        return True
    err = ctypes.get_errno()
    if err in (22, 38, 95):  # EINVAL, ENOSYS, EOPNOTSUPP: the file system cannot exchange
        return False
    raise OSError(err, os.strerror(err), str(a))


def swap_directory(new: Path, target: Path) -> None:
    """Make ``new`` appear at ``target`` in one step; the old ``target`` ends up at ``new``."""
    if not target.exists():
        os.rename(new, target)
        return
    if _renameat2_exchange(new, target):
        return  # ``new`` now holds the old directory: the caller removes it
    old = new.with_name(new.name + ".old")
    os.rename(target, old)
    os.rename(new, target)
    os.rename(old, new)


def materialise(repository: Path, name: str, files: dict[str, Path]) -> Path:
    """Build the model directory ``name`` from cached files and swap it in atomically.

    ``files``: ``{path in the model directory: cached file}``; must hold ``config.pbtxt``."""
    _safe_relative(name)
    if CONFIG_FILE not in files:
        raise ValueError(f"model {name}: {CONFIG_FILE} missing")
    repository.mkdir(parents=True, exist_ok=True)
    staging = repository / STAGING_DIR
    staging.mkdir(exist_ok=True)
    tmp = staging / f"{name}.{uuid.uuid4().hex[:12]}"
    tmp.mkdir()
    try:
        for rel, src in sorted(files.items()):
            _place(src, tmp / _safe_relative(rel))
        swap_directory(tmp, repository / name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # after a swap: the old directory
        with contextlib.suppress(OSError):
            staging.rmdir()  # only when empty
    return repository / name


def remove_model_dir(repository: Path, name: str) -> None:
    """Take a model directory out of the repository (renamed away first, then deleted)."""
    target = repository / _safe_relative(name)
    if not target.exists():
        return
    staging = repository / STAGING_DIR
    staging.mkdir(exist_ok=True)
    gone = staging / f"{name}.removed.{uuid.uuid4().hex[:12]}"
    os.rename(target, gone)
    shutil.rmtree(gone, ignore_errors=True)
    with contextlib.suppress(OSError):
        staging.rmdir()


# --------------------------------------------------------------------------- Triton config


def load_config(
    config_text: str, name: str, versions: Iterable[str], gpus: list[int] | None
) -> str:
    """The JSON config override for Triton's load call (see the module docstring)."""
    from google.protobuf import json_format, text_format
    from tritonclient.grpc import model_config_pb2 as mc

    cfg = text_format.Parse(config_text, mc.ModelConfig())
    cfg.name = name
    cfg.version_policy.Clear()
    cfg.version_policy.specific.versions.extend(sorted(int(v) for v in versions))
    if gpus is not None:
        pinned = [g for g in cfg.instance_group if g.kind != mc.ModelInstanceGroup.KIND_CPU]
        if not cfg.instance_group:
            pinned = [cfg.instance_group.add(count=1)]
        for group in pinned:
            group.kind = mc.ModelInstanceGroup.KIND_GPU
            del group.gpus[:]
            group.gpus.extend(gpus)
    doc = json_format.MessageToDict(cfg, preserving_proto_field_name=True)
    return json.dumps(doc, separators=(",", ":"))


def triton_gpu_map(configured: list[str] | None, detected: Sequence[GpuInfo]) -> dict[int, int]:
    """Host GPU index → the index Triton sees.

    ``configured`` is the runner's ``gpus`` setting (indexes or UUIDs; None = every GPU NVML
    finds, in NVML order): the container gets those devices in that order, numbered from 0."""
    if configured is None:
        return {g.index: i for i, g in enumerate(detected)}
    by_uuid = {g.uuid: g.index for g in detected}
    out: dict[int, int] = {}
    for i, item in enumerate(configured):
        host = int(item) if item.isdigit() else by_uuid.get(item)
        if host is not None:
            out[host] = i
    return out


def files_of_version(files: Sequence[DesiredFile], version: str) -> list[DesiredFile]:
    """The files of one version: ``config.pbtxt`` and those under ``<version>/``."""
    return [f for f in files if f.path == CONFIG_FILE or f.path.startswith(f"{version}/")]
