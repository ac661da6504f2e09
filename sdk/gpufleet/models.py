"""The model repository: push a Triton model directory, list, get, delete, deploy.

A Triton model directory looks like ``<model>/config.pbtxt`` + ``<model>/<version>/…``.
:func:`plan_push` picks the version directory (the highest number unless one is asked
for) and hashes every file; :func:`push` creates the version, streams each file to its
presigned URL (multipart parts when the server asks for them) and commits it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from gpufleet._transport import Core, FileSlice, Op, seg
from gpufleet.wire import (
    CommitRequest,
    CreateVersionRequest,
    CreateVersionResponse,
    DeploymentSpec,
    DeploymentView,
    FileSpec,
    ModelList,
    ModelVersionView,
    ModelView,
    UploadTarget,
)

__all__ = ["LocalFile", "ProgressCallback", "PushPlan", "plan_push"]

#: ``progress(bytes_sent, bytes_total)`` over all files of a push.
ProgressCallback = Callable[[int, int], None]
_HASH_CHUNK = 1024 * 1024


@dataclass(frozen=True)
class LocalFile:
    """One file to upload: its path in the repository layout and on disk."""

    path: str
    local: Path
    size: int
    sha256: str


@dataclass(frozen=True)
class PushPlan:
    """What :func:`push` will upload."""

    name: str
    version: str
    files: list[LocalFile]
    pinned: bool = False  # the version was asked for (else the control plane numbers it)

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _local(root: Path, path: Path) -> LocalFile:
    rel = path.relative_to(root).as_posix()  # forward slashes, also on Windows
    return LocalFile(rel, path, path.stat().st_size, _sha256(path))


SKIPPED_DIR = "__pycache__"


def plan_push(path: str | Path, version: str | None = None, name: str | None = None) -> PushPlan:
    """Inspect a Triton model directory: ``config.pbtxt`` plus one numeric version dir."""
    root = Path(path)
    if not root.is_dir():
        raise ValueError(f"{root} is not a directory")
    config = root / "config.pbtxt"
    if not config.is_file():
        raise ValueError(f"{root} has no config.pbtxt")
    versions = sorted(
        (p for p in root.iterdir() if p.is_dir() and p.name.isdigit() and int(p.name) > 0),
        key=lambda p: int(p.name),
    )
    if version is not None:
        chosen = root / str(version)
        if not chosen.is_dir():
            raise ValueError(f"{root} has no version directory {version!r}")
    elif versions:
        chosen = versions[-1]
    else:
        raise ValueError(f"{root} has no numeric version directory")
    files = [_local(root, config)]
    for p in sorted(chosen.rglob("*")):
        rel = p.relative_to(root)
        if SKIPPED_DIR in rel.parts or p.suffix == ".pyc":
            continue  # Python's bytecode cache (Triton's Python backend writes one too)
        if p.is_symlink():
            raise ValueError(f"{rel} is a symbolic link: push real files only")
        if p.is_file():
            files.append(_local(root, p))
    plan = PushPlan(name or root.resolve().name, chosen.name, files, pinned=version is not None)
    check_config(config, plan.name)
    return plan


def check_config(path: Path, name: str) -> str:
    """``config.pbtxt``'s text, checked before anything is uploaded: UTF-8, and (when the
    protobuf and tritonclient packages are installed) parsed as Triton's ModelConfig naming
    ``name``. The control plane parses it again when the push starts. ValueError otherwise."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path} is not UTF-8 text") from exc
    try:
        from google.protobuf import text_format
        from tritonclient.grpc import model_config_pb2
    except ImportError:  # the base install: the control plane checks it at POST …/versions
        return text
    cfg = model_config_pb2.ModelConfig()
    try:
        text_format.Parse(text, cfg)
    except text_format.ParseError as exc:
        raise ValueError(f"{path} does not parse as a Triton model config: {exc}") from exc
    if cfg.name and cfg.name != name:
        raise ValueError(f"{path} names the model {cfg.name!r}, not {name!r}")
    return text


class _Progress:
    """Adds up bytes sent per upload (a retried upload restarts its own count)."""

    def __init__(self, total: int, callback: ProgressCallback | None) -> None:
        self.total = total
        self.callback = callback
        self.sent: dict[tuple[str, int], int] = {}

    def tracker(self, key: tuple[str, int]) -> Callable[[int], None]:
        def report(sent: int) -> None:
            self.sent[key] = sent
            if self.callback is not None:
                self.callback(sum(self.sent.values()), self.total)

        return report


def _streamed_put(url: str, headers: dict[str, str], stream: FileSlice) -> httpx.Request:
    """A PUT whose body streams from a file (httpx adds no Host header to such requests)."""
    req = httpx.Request("PUT", url, headers=headers, stream=stream)
    req.headers.setdefault("Host", req.url.netloc.decode("ascii"))
    return req


def _upload(
    core: Core, target: UploadTarget, local: LocalFile, progress: _Progress
) -> Op[list[str] | None]:
    """Upload one file: a single PUT, or its multipart parts (returns their ETags)."""
    if target.multipart is None:
        if target.url is None:
            raise ValueError(f"upload target for {target.path} has neither url nor multipart")
        headers = {**target.headers, "Content-Length": str(local.size)}
        stream = FileSlice(local.local, 0, local.size, progress.tracker((local.path, 0)))
        yield from core.send_external(_streamed_put(target.url, headers, stream))
        return None
    etags: list[str] = []
    part_size = target.multipart.part_size
    for part in sorted(target.multipart.parts, key=lambda p: p.number):
        offset = (part.number - 1) * part_size
        length = max(0, min(part_size, local.size - offset))
        stream = FileSlice(local.local, offset, length, progress.tracker((local.path, part.number)))
        req = _streamed_put(part.url, {"Content-Length": str(length)}, stream)
        resp = yield from core.send_external(req)
        etags.append(resp.headers.get("ETag", ""))
    return etags


def push(
    core: Core,
    path: str | Path,
    version: str | None = None,
    name: str | None = None,
    progress: ProgressCallback | None = None,
) -> Op[ModelVersionView]:
    """Create a version from a local Triton model directory, upload it, commit it.

    Without ``version`` the control plane numbers it (the next one); content identical to a
    READY version returns that version and uploads nothing, so pushing twice is harmless.
    """
    plan = plan_push(path, version, name)
    specs = [FileSpec(path=f.path, size=f.size, sha256=f.sha256) for f in plan.files]
    config = next(f for f in plan.files if f.path == "config.pbtxt")
    body = CreateVersionRequest(
        version=plan.version if plan.pinned else None,
        files=specs,
        config=config.local.read_text(encoding="utf-8"),
    ).model_dump(mode="json", exclude_none=True)
    resp = yield from core.request(
        "POST", f"/v1/models/{seg(plan.name)}/versions", json=body, idempotent=False
    )
    created = CreateVersionResponse.model_validate(resp.json())
    if created.state == "READY":  # the same content is that version already: its view
        resp = yield from core.request(
            "POST",
            f"/v1/models/{seg(plan.name)}/versions/{seg(created.version)}/commit",
            json=CommitRequest().model_dump(mode="json"),
            idempotent=False,
        )
        return ModelVersionView.model_validate(resp.json())
    by_path = {f.path: f for f in plan.files}
    tracker = _Progress(plan.total_bytes, progress)
    parts: dict[str, list[str]] = {}
    for target in created.uploads:
        local = by_path.get(target.path)
        if local is None:
            raise ValueError(f"server asked for {target.path!r}, which is not being pushed")
        etags = yield from _upload(core, target, local, tracker)
        if etags is not None:
            parts[target.path] = etags
    commit = CommitRequest(parts=parts).model_dump(mode="json")
    resp = yield from core.request(
        "POST",
        f"/v1/models/{seg(plan.name)}/versions/{seg(created.version)}/commit",
        json=commit,
        idempotent=False,
        timeout=max(core.timeout, 300.0),  # the server hashes every object
    )
    return ModelVersionView.model_validate(resp.json())


def list_models(core: Core) -> Op[list[ModelView]]:
    resp = yield from core.request("GET", "/v1/models")
    return ModelList.model_validate(resp.json()).models


def get_model(core: Core, name: str) -> Op[ModelView]:
    resp = yield from core.request("GET", f"/v1/models/{seg(name)}")
    return ModelView.model_validate(resp.json())


def delete_version(core: Core, name: str, version: str) -> Op[dict[str, Any]]:
    resp = yield from core.request("DELETE", f"/v1/models/{seg(name)}/versions/{seg(version)}")
    return dict(resp.json())


def deploy(
    core: Core,
    name: str,
    min_replicas: int = 1,
    max_replicas: int = 1,
    regions: Sequence[str] | None = None,
    gpu_memory_mb: int | None = None,
) -> Op[DeploymentView]:
    spec = DeploymentSpec(
        min_replicas=min_replicas,
        max_replicas=max_replicas,
        regions=list(regions or []),
        gpu_memory_mb=gpu_memory_mb,
    )
    body = spec.model_dump(mode="json", exclude_none=True)
    resp = yield from core.request("PUT", f"/v1/models/{seg(name)}/deployment", json=body)
    return DeploymentView.model_validate(resp.json())


def get_deployment(core: Core, name: str) -> Op[DeploymentView]:
    resp = yield from core.request("GET", f"/v1/models/{seg(name)}/deployment")
    return DeploymentView.model_validate(resp.json())
