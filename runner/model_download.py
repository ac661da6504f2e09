"""Model files from the bucket into the runner's content-addressed cache (``runner.cache``).

The heartbeat answer lists the model versions this runner should serve
(``HeartbeatResponse.desired_models``; ``DesiredModel.files`` carries each file's path, size,
sha256 and a presigned GET URL). ``Downloader.fetch`` brings every file of a version into the
cache, several at once, resumable (a partial file is kept and continued with an HTTP
``Range`` request), each checked for size and sha256 before it enters the cache. A file
already cached is re-hashed before it is used; a tampered one is removed and downloaded
again. An object in the bucket whose bytes do not match raises ``DownloadError`` (never
reaches Triton) and is not fetched again for ``quarantine_s`` (retries report the same error
meanwhile).

The rest of model sync: ``runner.model_repo`` (the repository directory: atomic swaps),
``runner.triton_config`` (the load call's config override), ``runner.model_manager``
(what to sync, load and unload).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Sequence
from pathlib import Path

import httpx
from gpufleet.wire import DesiredFile

from runner.cache import CacheError, ContentCache

log = logging.getLogger(__name__)

CHUNK = 1024 * 1024


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
