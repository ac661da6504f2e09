"""The model repository: versions uploaded by presigned URLs, verified, then READY.

Lifecycle of a version: ``create_version`` validates the layout (and ``config.pbtxt`` when the
client sends its text: a broken config costs no upload), answers the existing version when a
READY one holds the same files (pushing twice is harmless), records the version as
UPLOADING and hands out presigned PUTs (multipart above 64 MiB); the client uploads to the
bucket; ``commit`` checks every object's size and sha256 from its bytes, parses
``config.pbtxt`` as Triton's ModelConfig and flips UPLOADING -> READY with one conditional
write. A mismatch leaves the version UPLOADING: nothing half-uploaded becomes READY.

A model without a deployment gets an implicit one when its first version becomes READY
(``min_replicas`` 0, ``max_replicas`` = ``implicit_max_replicas``, marked ``implicit``): its
first job cold-starts one replica, as on serverless platforms. ``PUT …/deployment`` replaces
it; ``implicit_max_replicas`` 0 turns this off.

Model names are global (one namespace, as Triton's repository has one): the tenant whose
first valid version request claims a name owns it. Nothing is claimed before the request is
fully validated (paths, limits, config), so a refused upload claims nothing. Other tenants
get 404 on every route, creating a version included (a 409 would tell them the name exists
elsewhere); admins see and manage every model. The owner releases a name that holds no
version with ``release_name`` (``DELETE /v1/models/{name}``).
"""

from __future__ import annotations

import hashlib
import logging
import math
import re
from collections.abc import Callable, Sequence
from typing import Any

from gpufleet.wire import (
    NAME_PATTERN,
    CommitRequest,
    CreateVersionRequest,
    CreateVersionResponse,
    FileSpec,
    ModelList,
    ModelVersionView,
    ModelView,
    MultipartPart,
    MultipartUpload,
    TensorSpec,
    UploadTarget,
)

from control_plane import clock
from control_plane.clock import iso
from control_plane.errors import Conflict, InvalidRequest, ModelNotFound, NotFound
from control_plane.services import modelconfig
from control_plane.services.principal import Principal
from control_plane.settings import Settings
from control_plane.storage.definitions import MODELS_PREFIX
from control_plane.storage.protocols import (
    BlobStore,
    DeploymentStore,
    ModelStore,
    ModelVersionRecord,
)

PART_SIZE = 64 * 1024 * 1024
MAX_PARTS = 10_000
_NAME = re.compile(NAME_PATTERN)


log = logging.getLogger(__name__)


def object_key(name: str, version: str, path: str) -> str:
    """Where one uploaded file lives: ``models/<name>/<version>/<path>``."""
    return f"{MODELS_PREFIX}{name}/{version}/{path}"


def _tensor_views(specs: list[dict[str, object]], max_batch_size: int) -> list[TensorSpec]:
    batch = [-1] if max_batch_size > 0 else []
    return [
        TensorSpec(
            name=str(t["name"]),
            datatype=str(t["datatype"]),
            shape=batch + [int(d) for d in t["dims"]],  # type: ignore[attr-defined]
        )
        for t in specs
    ]


def version_view(rec: ModelVersionRecord) -> ModelVersionView:
    """The wire view of a version (shapes with -1 as the batch dimension, as Triton shows)."""
    return ModelVersionView(
        name=rec.name,
        version=rec.version,
        state=rec.state,
        created_at=iso(rec.created_at) or "",
        platform=rec.platform or rec.backend or None,
        max_batch_size=rec.max_batch_size,
        inputs=_tensor_views(rec.inputs, rec.max_batch_size),
        outputs=_tensor_views(rec.outputs, rec.max_batch_size),
        files=[FileSpec(**f) for f in rec.files],
        config=rec.config,
    )


def _content_key(files: list[dict[str, Any]]) -> frozenset[tuple[str, int, str]]:
    """What a version holds, its own number left out: (path below the version, size, sha256)."""
    out = set()
    for f in files:
        path = str(f["path"])
        if path != modelconfig.CONFIG_FILE:
            path = "#/" + path.split("/", 1)[-1]
        out.add((path, int(f["size"]), str(f["sha256"])))
    return frozenset(out)


def implicit_spec(max_replicas: int) -> dict[str, object]:
    """The stored spec of an implicit deployment (``implicit`` marks it in views)."""
    return {
        "min_replicas": 0,
        "max_replicas": max_replicas,
        "regions": [],
        "gpu_memory_mb": None,
        "implicit": True,
    }


class ModelService:
    """Versions of Triton models in the bucket, owned by tenants."""

    def __init__(
        self,
        settings: Settings,
        store: ModelStore,
        blobs: BlobStore,
        *,
        part_size: int = PART_SIZE,
        deployments: DeploymentStore | None = None,
        now: Callable[[], float] = clock.now,
        loaded_on: Callable[[str], dict[str, list[str]]] | None = None,
        after_ready: Sequence[Callable[[ModelVersionRecord], None]] = (),
        after_delete: Sequence[Callable[[str, str], None]] = (),
    ) -> None:
        self._settings = settings
        self._deployments = deployments
        self._now = now
        self._store = store
        self._blobs = blobs
        # Bumped by every commit and delete on this replica: caches of READY versions made
        # before a change here are dropped at once (other replicas' changes: by their TTL).
        self.generation = 0
        self._part_size = part_size
        # model name -> {version: runner ids reporting it READY} (services/deployments.py)
        self.loaded_on = loaded_on
        # Called with each version this replica marks READY (region copies, regions.md).
        self.after_ready = tuple(after_ready)
        # Called with (name, version) of each version this replica deletes.
        self.after_delete = tuple(after_delete)

    # ------------------------------------------------------------------ access
    def _visible_owner(self, p: Principal | None, name: str, missing: type[NotFound]) -> str:
        owner = self._store.owner(name) if _NAME.fullmatch(name) else None
        if owner is None or (p is not None and not p.can_see_tenant(owner)):
            raise missing(f"model {name!r} not found")
        return owner

    def visible_owner(self, p: Principal | None, name: str) -> str:
        """The tenant owning a model the caller may see; ``NotFound`` otherwise."""
        return self._visible_owner(p, name, NotFound)

    # ------------------------------------------------------------------ upload
    def create_version(
        self, p: Principal, name: str, req: CreateVersionRequest
    ) -> CreateVersionResponse:
        """Validate the layout, record the version UPLOADING, hand out presigned uploads."""
        p.require("models:write")
        if not _NAME.fullmatch(name):
            raise InvalidRequest(f"model name {name!r} is not valid", field="name")
        ts = self._now()
        owner = self._store.owner(name)
        if owner is not None and not p.can_see_tenant(owner):
            raise NotFound(f"model {name!r} not found")  # no existence oracle: as a read
        for i, f in enumerate(req.files):
            modelconfig.validate_path(f.path, i)
        self._check_limits(req.files)
        if req.config is not None:
            self._check_config(name, req)
        if not req.version:  # the numbered layout is checked on version "1"'s numbering
            modelconfig.validate_layout([f.path for f in modelconfig.renumber(req.files, "1")], "1")
        else:
            modelconfig.validate_layout([f.path for f in req.files], req.version)
        if owner is None:  # validated: only now is the name claimed
            owner = self._store.claim_name(name, p.tenant, ts)
            if not p.can_see_tenant(owner):  # another tenant's concurrent first claim won
                raise NotFound(f"model {name!r} not found")
        same = self._same_content(name, req)
        if same is not None:
            return CreateVersionResponse(name=name, version=same, state="READY", uploads=[])
        if req.version and self._store.get_version(name, req.version) is not None:
            raise Conflict(
                f"model {name!r} version {req.version} exists already with other content "
                "(push without a version to make the next one)"
            )
        for attempt in range(5):
            version = req.version or self._next_version(name)
            files = req.files if req.version else modelconfig.renumber(req.files, version)
            modelconfig.validate_layout([f.path for f in files], version)
            uploads, targets = self._upload_targets(name, version, files)
            for target, sent in zip(targets, req.files, strict=True):
                target.path = sent.path  # the client's own path names its file
            rec = ModelVersionRecord(
                name=name,
                version=version,
                tenant=owner,
                state="UPLOADING",
                created_at=ts,
                files=[f.model_dump() for f in files],
                uploads=uploads,
            )
            if self._store.put_version(rec):
                return CreateVersionResponse(
                    name=name, version=version, state="UPLOADING", uploads=targets
                )
            if req.version or attempt == 4:
                raise Conflict(f"model {name!r} version {version} exists already")
        raise Conflict("could not pick a version number")  # pragma: no cover

    def _check_config(self, name: str, req: CreateVersionRequest) -> None:
        """The ``config.pbtxt`` text sent with the request: the declared file, and valid."""
        text = req.config or ""
        declared = next((f for f in req.files if f.path == modelconfig.CONFIG_FILE), None)
        if declared is None:
            raise InvalidRequest("config.pbtxt is not among the files", field="files")
        raw = text.encode("utf-8")
        if len(raw) != declared.size or hashlib.sha256(raw).hexdigest() != declared.sha256:
            raise InvalidRequest(
                "config is not the config.pbtxt declared in files (size or sha256 differ)",
                field="config",
            )
        parsed = modelconfig.parse_config(text, name)
        paths = [f.path for f in req.files]
        dirs = {p.split("/", 1)[0] for p in paths if p != modelconfig.CONFIG_FILE}
        if len(dirs) == 1:
            modelconfig.check_default_model_file(parsed, paths, next(iter(dirs)))

    def _same_content(self, name: str, req: CreateVersionRequest) -> str | None:
        """The READY version holding exactly the files of ``req`` (the pinned one only when
        ``req.version`` is set), or None."""
        wanted = _content_key([f.model_dump() for f in req.files])
        for rec in self._store.list_versions(name):
            if req.version and rec.version != req.version:
                continue
            if rec.state == "READY" and _content_key(rec.files) == wanted:
                return rec.version
        return None

    def _check_limits(self, files: list[FileSpec]) -> None:
        """At most ``model_max_files`` files of ``model_max_bytes`` in all (422 on ``files``)."""
        limit = self._settings.model_max_files
        if len(files) > limit:
            raise InvalidRequest(
                f"{len(files)} files: a model version holds at most {limit}", field="files"
            )
        total = sum(f.size for f in files)
        if total > self._settings.model_max_bytes:
            raise InvalidRequest(
                f"{total} bytes in all: a model version holds at most "
                f"{self._settings.model_max_bytes}",
                field="files",
            )

    def _next_version(self, name: str) -> str:
        versions = self._store.list_versions(name)
        return str(max((int(v.version) for v in versions), default=0) + 1)

    def _upload_targets(
        self, name: str, version: str, files: list[FileSpec]
    ) -> tuple[dict[str, str], list[UploadTarget]]:
        ttl = self._settings.presign_ttl_s
        uploads: dict[str, str] = {}
        targets: list[UploadTarget] = []
        for f in files:
            key = object_key(name, version, f.path)
            if f.size <= self._part_size:
                url = self._blobs.presign_put(key, ttl)
                targets.append(UploadTarget(path=f.path, method="PUT", url=url))
                continue
            count = math.ceil(f.size / self._part_size)
            if count > MAX_PARTS:
                raise InvalidRequest(f"file {f.path!r} is too large", field="files")
            upload_id = self._blobs.create_multipart(key)
            uploads[f.path] = upload_id
            parts = [
                MultipartPart(number=i, url=self._blobs.presign_upload_part(key, upload_id, i, ttl))
                for i in range(1, count + 1)
            ]
            targets.append(
                UploadTarget(
                    path=f.path,
                    multipart=MultipartUpload(
                        upload_id=upload_id, part_size=self._part_size, parts=parts
                    ),
                )
            )
        return uploads, targets

    def commit(self, p: Principal, name: str, version: str, req: CommitRequest) -> ModelVersionView:
        """Verify every object (size, sha256 of the bytes), parse the config, mark READY."""
        p.require("models:write")
        self._visible_owner(p, name, NotFound)
        self.generation += 1
        rec = self._get(name, version)
        if rec.state == "READY":
            return version_view(rec)
        if rec.state != "UPLOADING":
            raise Conflict(f"model {name!r} version {version} is {rec.state}")
        self._complete_multiparts(rec, req)
        problems = self._verify_files(rec)
        if problems:
            raise InvalidRequest(
                f"{len(problems)} file(s) do not match what was declared: "
                + ", ".join(x["field"].removeprefix("files.") for x in problems),
                field="files",
                details=problems,
            )
        text = self._blobs.get_bytes(object_key(name, version, modelconfig.CONFIG_FILE))
        try:
            parsed = modelconfig.parse_config(text.decode("utf-8"), name)
        except UnicodeDecodeError as exc:
            raise InvalidRequest("config.pbtxt is not UTF-8", field="config.pbtxt") from exc
        modelconfig.check_default_model_file(parsed, [f["path"] for f in rec.files], version)
        rec.platform, rec.backend = parsed.platform or None, parsed.backend or None
        rec.max_batch_size = parsed.max_batch_size
        rec.inputs, rec.outputs, rec.config = parsed.inputs, parsed.outputs, parsed.config
        if not self._store.mark_ready(rec):
            current = self._get(name, version)
            if current.state != "READY":
                raise Conflict(f"model {name!r} version {version} is {current.state}")
            return version_view(current)
        rec.state = "READY"
        self._ensure_deployment(name)
        for hook in self.after_ready:
            try:
                hook(rec)
            except Exception:
                log.warning("after_ready hook failed for %s %s", name, version, exc_info=True)
        return version_view(rec)

    def _ensure_deployment(self, name: str) -> None:
        """Give a model without a deployment the implicit one (see the module docstring)."""
        replicas = self._settings.implicit_max_replicas
        if self._deployments is None or replicas <= 0:
            return
        if self._deployments.get_deployment(name) is not None:
            return  # an explicit (or earlier implicit) deployment stays as it is
        spec = implicit_spec(replicas)
        self._deployments.put_deployment(name, spec, self._now())

    def _complete_multiparts(self, rec: ModelVersionRecord, req: CommitRequest) -> None:
        for path, upload_id in rec.uploads.items():
            key = object_key(rec.name, rec.version, path)
            etags = req.parts.get(path)
            if not etags:
                if self._blobs.head(key) is not None:
                    continue  # completed by an earlier commit
                raise InvalidRequest(
                    f"{path!r} was uploaded in parts: list their ETags in parts",
                    field=f"parts.{path}",
                )
            try:
                self._blobs.complete_multipart(key, upload_id, etags)
            except NotFound as exc:
                if self._blobs.head(key) is None:
                    raise InvalidRequest(
                        f"{path!r}: the multipart upload cannot be completed ({exc.message})",
                        field=f"parts.{path}",
                    ) from exc

    def _verify_files(self, rec: ModelVersionRecord) -> list[dict[str, str]]:
        problems: list[dict[str, str]] = []
        for f in rec.files:
            key = object_key(rec.name, rec.version, f["path"])
            size = self._blobs.head(key)
            where = f"files.{f['path']}"
            if size is None:
                problems.append({"field": where, "message": "not uploaded"})
            elif size != f["size"]:
                problems.append({"field": where, "message": f"size {size} != {f['size']}"})
            elif self._blobs.sha256_of(key) != f["sha256"]:
                problems.append({"field": where, "message": "sha256 does not match"})
        return problems

    # ------------------------------------------------------------------ reads
    def _get(self, name: str, version: str) -> ModelVersionRecord:
        rec = self._store.get_version(name, version) if version.isdigit() else None
        if rec is None:
            raise NotFound(f"model {name!r} has no version {version}")
        return rec

    def list_models(self, p: Principal) -> ModelList:
        """Every model the caller can see, with its versions."""
        p.require("models:read")
        views = [
            ModelView(
                name=name,
                tenant=tenant,
                versions=[version_view(v) for v in self._store.list_versions(name)],
            )
            for name, tenant in self._store.list_names()
            if p.can_see_tenant(tenant)
        ]
        return ModelList(models=views)

    def get(self, p: Principal, name: str) -> ModelView:
        """A model with its versions and, per version, the runners that report it READY."""
        p.require("models:read")
        owner = self._visible_owner(p, name, NotFound)
        versions = [version_view(v) for v in self._store.list_versions(name)]
        if self.loaded_on is not None:
            where = self.loaded_on(name)
            for view in versions:
                view.loaded_on = where.get(view.version, [])
        return ModelView(name=name, tenant=owner, versions=versions)

    def release(self, p: Principal, name: str) -> None:
        """Give up a name that holds no version (a refused or abandoned first upload), so
        any tenant may claim it again. 409 while a version or a deployment remains."""
        p.require("models:write")
        owner = self._visible_owner(p, name, NotFound)
        if self._store.list_versions(name):
            raise Conflict(f"model {name!r} still has versions: delete them first")
        if self._deployments is not None and self._deployments.get_deployment(name):
            raise Conflict(f"model {name!r} has a deployment: it keeps the name")
        self.generation += 1
        if not self._store.release_name(name, owner):
            raise Conflict(f"model {name!r} gained a version meanwhile; nothing released")

    def delete_version(self, p: Principal, name: str, version: str) -> None:
        """Remove a version and its objects (jobs pinned to it then get model_not_found)."""
        p.require("models:write")
        self._visible_owner(p, name, NotFound)
        self._get(name, version)
        self.generation += 1
        self._store.delete_version(name, version)
        self._blobs.delete_prefix(object_key(name, version, ""))
        for hook in self.after_delete:
            try:
                hook(name, version)
            except Exception:
                log.warning("after_delete hook failed for %s %s", name, version, exc_info=True)

    def ready_record(
        self, p: Principal | None, name: str, version: str | None
    ) -> ModelVersionRecord:
        """The pinned version if READY, else the newest READY one; ModelNotFound otherwise."""
        self._visible_owner(p, name, ModelNotFound)
        if version is not None:
            rec = self._store.get_version(name, version) if version.isdigit() else None
            if rec is not None and rec.state == "READY":
                return rec
            raise ModelNotFound(f"model {name!r} has no READY version {version}")
        for rec in self._store.list_versions(name):
            if rec.state == "READY":
                return rec
        raise ModelNotFound(f"model {name!r} has no READY version")

    def ready_version(
        self, p: Principal | None, name: str, version: str | None
    ) -> ModelVersionView:
        """``ready_record`` as a wire view (``p`` None: no tenant check, for runners)."""
        return version_view(self.ready_record(p, name, version))
