"""The runner's content-addressed file cache: ``<root>/sha256/<digest>``.

A file enters the cache only after its size and sha256 were checked against what the control
plane says the upload was verified against; partial downloads live in ``<root>/partial/``
(kept between tries, so a download resumes with an HTTP Range request). Every use re-hashes
the cached file (``verified``): a file changed on disk after it was cached is refused and
removed, never handed to Triton.

Files are stored read-only (0444): Triton's container only reads them, and nothing else on
the host has a reason to write them.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from pathlib import Path

log = logging.getLogger(__name__)

_DIGEST = re.compile(r"^[0-9a-f]{64}$")
CHUNK = 1024 * 1024


class CacheError(Exception):
    """A file is not (or no longer) what its digest says."""


def sha256_file(path: Path, *, chunk: int = CHUNK) -> str:
    """The hex sha256 of a file (blocking: call it in a thread for big files)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _check_digest(digest: str) -> str:
    if not _DIGEST.fullmatch(digest):
        raise CacheError(f"not a sha256 digest: {digest!r}")
    return digest


class ContentCache:
    """Verified files by sha256, plus the partial downloads that will become them."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.objects = self.root / "sha256"
        self.partial = self.root / "partial"
        self.objects.mkdir(parents=True, exist_ok=True)
        self.partial.mkdir(parents=True, exist_ok=True)

    def path(self, digest: str) -> Path:
        """Where the file with this digest lives once cached."""
        return self.objects / _check_digest(digest)

    def partial_path(self, digest: str) -> Path:
        """The partial download of this digest (appended to until complete)."""
        return self.partial / f"{_check_digest(digest)}.part"

    def verified(self, digest: str, size: int) -> Path | None:
        """The cached file if present and still intact (size and sha256 re-checked now).

        A cached file that no longer matches is removed and logged (tampering or disk
        corruption); the caller downloads it again."""
        path = self.path(digest)
        try:
            actual_size = path.stat().st_size
        except FileNotFoundError:
            return None
        problem = None
        if actual_size != size:
            problem = f"size {actual_size} != {size}"
        elif sha256_file(path) != digest:
            problem = "sha256 does not match"
        if problem is None:
            return path
        log.error(
            "cached file %s refused (%s): removed, it will be downloaded again", path, problem
        )
        self.discard(digest)
        return None

    def commit(self, digest: str, size: int) -> Path:
        """Move a complete partial download into the cache after checking it.

        Raises CacheError (and removes the partial file) when size or sha256 differ."""
        part = self.partial_path(digest)
        actual_size = part.stat().st_size
        if actual_size != size:
            part.unlink(missing_ok=True)
            raise CacheError(f"size mismatch: got {actual_size} bytes, expected {size}")
        actual = sha256_file(part)
        if actual != digest:
            part.unlink(missing_ok=True)
            raise CacheError(f"sha256 mismatch: got {actual}, expected {digest}")
        os.chmod(part, 0o444)
        target = self.path(digest)
        os.replace(part, target)
        return target

    def discard(self, digest: str) -> None:
        """Drop a cached file (and any partial download of it)."""
        for p in (self.path(digest), self.partial_path(digest)):
            p.unlink(missing_ok=True)  # read-only files: unlinking needs the directory only

    def digests(self) -> set[str]:
        """Every digest cached now."""
        return {p.name for p in self.objects.iterdir() if _DIGEST.fullmatch(p.name)}

    def size_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.objects.iterdir() if p.is_file())

    def prune(self, keep: set[str]) -> list[str]:
        """Remove cached files whose digest is not in ``keep``; returns what was removed."""
        removed = []
        for digest in sorted(self.digests() - keep):
            self.discard(digest)
            removed.append(digest)
        return removed
