"""The install plan of synced models: pure data, no I/O.

- ``group_desired``: the heartbeat's desired entries by model name (``Want``: several
  versions of one name load as one Triton model);
- ``fingerprint``: what of the desired list decides the work (presigned URLs change on
  every heartbeat and are not in it);
- ``installation`` / ``merge``: the model directory to put in place (``Installed``: which
  cached file goes where, with its digest), alone or next to versions still serving.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gpufleet.wire import DesiredFile, DesiredModel

from runner.triton_config import CONFIG_FILE


@dataclass
class Want:
    """What one model name should be, from the desired list."""

    name: str
    versions: tuple[str, ...]
    gpus: tuple[int, ...] | None
    files: dict[str, tuple[DesiredFile, ...]]
    managed: bool = True
    digest_key: tuple[tuple[str, str, str, int], ...] = ()


def installation(
    versions: tuple[str, ...],
    gpus: tuple[int, ...] | None,
    digest_key: tuple[tuple[str, str, str, int], ...],
    cached: dict[str, dict[str, Path]],
    specs: dict[str, tuple[DesiredFile, ...]],
) -> Installed:
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
    return Installed(versions, gpus, digest_key, files, digests)


def merge(old: Installed, new: Installed, keep: set[str]) -> Installed:
    """``new`` plus the versions ``keep`` of ``old`` (config.pbtxt of ``new``)."""
    versions = tuple(sorted(set(new.versions) | keep, key=int))
    files = dict(new.files)
    digests = dict(new.digests)
    for path, f in old.files.items():
        if path.split("/", 1)[0] in keep:
            files[path] = f
            digests[path] = old.digests[path]
    return Installed(versions, new.gpus, new.digest_key, files, digests)


@dataclass
class Installed:
    """What was last put into the repository for one model, and loaded."""

    versions: tuple[str, ...]
    gpus: tuple[int, ...] | None
    digest_key: tuple[tuple[str, str, str, int], ...]
    files: dict[str, Path]  # path in the model directory -> cached file
    digests: dict[str, tuple[str, int]]  # path -> (sha256, size)


def group_desired(desired: Sequence[DesiredModel]) -> dict[str, Want]:
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
        out[name] = Want(name, versions, gpus, files, all(d.managed for d in entries), key)
    return out


def fingerprint(desired: Sequence[DesiredModel] | None) -> Any:
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


def files_of_version(files: Sequence[DesiredFile], version: str) -> list[DesiredFile]:
    """The files of one version: ``config.pbtxt`` and those under ``<version>/``."""
    return [f for f in files if f.path == CONFIG_FILE or f.path.startswith(f"{version}/")]
