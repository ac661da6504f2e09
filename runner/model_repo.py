"""The Triton model repository directory: which models it holds, and how synced ones are
put in and taken out.

Layout: ``<repo>/<model>/config.pbtxt`` and numeric version directories; without a desired
list (local mode) the version served is the highest number (``scan_repository``).

Synced models (``runner.model_manager``): ``materialise`` builds the complete model directory
(``config.pbtxt`` + one directory per version) in ``<repository>/.gpufleet-staging/`` (same
file system: hard links from the cache, copies when linking is not possible), then swaps it
into ``<repository>/<name>`` with one atomic ``renameat2(RENAME_EXCHANGE)`` (two renames
where the kernel lacks it). The directory Triton may read is never written in place; the
manager never swaps while a load of that model is in flight. ``remove_model_dir`` takes one
out (renamed away first).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import logging
import os
import re
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runner.triton_config import CONFIG_FILE

log = logging.getLogger(__name__)
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


@dataclass(frozen=True)
class LocalModel:
    """One model directory and its highest version."""

    name: str
    version: str
    path: Path


def scan_repository(repo: Path) -> list[LocalModel]:
    """Models with a config.pbtxt and at least one numeric version directory."""
    repo = Path(repo).expanduser()
    if not repo.is_dir():
        log.warning("model repository %s does not exist: no models", repo)
        return []
    out = []
    for model_dir in sorted(p for p in repo.iterdir() if p.is_dir()):
        if not _NAME.fullmatch(model_dir.name) or not (model_dir / "config.pbtxt").is_file():
            continue
        versions = [int(v.name) for v in model_dir.iterdir() if v.is_dir() and v.name.isdigit()]
        versions = [v for v in versions if v > 0]
        if not versions:
            log.warning("model %s has no numeric version directory: skipped", model_dir.name)
            continue
        out.append(LocalModel(model_dir.name, str(max(versions)), model_dir))
    return out


def read_model_config(model_dir: Path) -> Any:
    """``config.pbtxt`` parsed as Triton's ``ModelConfig`` protobuf."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    text = (Path(model_dir) / "config.pbtxt").read_text()
    return text_format.Parse(text, model_config_pb2.ModelConfig())


# --------------------------------------------------------------------------- synced models

STAGING_DIR = ".gpufleet-staging"
_RENAME_EXCHANGE = 2


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
