"""Triton model layout rules: upload paths, ``config.pbtxt`` parsing, default model files.

One upload is one version: ``config.pbtxt`` plus the files of ``<version>/``. They are stored
under ``models/<name>/<version>/<path>``, so each version is a self-contained Triton model
directory that a runner can copy to ``<repository>/<name>/`` as it is.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from google.protobuf import json_format, text_format
from gpufleet.wire import FileSpec
from tritonclient.grpc import model_config_pb2

from control_plane.errors import InvalidRequest
from control_plane.services.text import check_text

CONFIG_FILE = "config.pbtxt"

# backend or platform -> the file (or directory) Triton loads when no
# ``default_model_filename`` is set; None = the backend needs no model file.
DEFAULT_MODEL_FILES: dict[str, str | None] = {
    "python": "model.py",
    "onnxruntime": "model.onnx",
    "onnxruntime_onnx": "model.onnx",
    "tensorrt": "model.plan",
    "tensorrt_plan": "model.plan",
    "pytorch": "model.pt",
    "pytorch_libtorch": "model.pt",
    "tensorflow": "model.savedmodel",
    "tensorflow_savedmodel": "model.savedmodel",
    "tensorflow_graphdef": "model.graphdef",
    "openvino": "model.xml",
    "ensemble": None,
}


# Backends and platforms Triton ships (and the common extra ones); anything else is a 422.
KNOWN_BACKENDS = frozenset(
    {
        "python",
        "onnxruntime",
        "tensorrt",
        "pytorch",
        "tensorflow",
        "openvino",
        "fil",
        "dali",
        "identity",
        "repeat",
        "square",
        "vllm",
        "tensorrtllm",
    }
)
# platform -> the backend that serves it (None: the ensemble scheduler, no backend)
KNOWN_PLATFORMS: dict[str, str | None] = {
    "tensorrt_plan": "tensorrt",
    "onnxruntime_onnx": "onnxruntime",
    "pytorch_libtorch": "pytorch",
    "tensorflow_graphdef": "tensorflow",
    "tensorflow_savedmodel": "tensorflow",
    "ensemble": None,
}
MAX_DIMS = 16  # the wire's Tensor.shape holds at most 16 dimensions (batch included)
MAX_SEGMENT = 255  # longest file or directory name on common file systems


def wire_datatype(config_type: str) -> str:
    """``TYPE_FP32`` -> ``FP32``; ``TYPE_STRING`` -> ``BYTES`` (Triton's naming)."""
    name = config_type.removeprefix("TYPE_")
    return "BYTES" if name == "STRING" else name


@dataclass
class ParsedConfig:
    """What the control plane keeps of a model's ``config.pbtxt``."""

    name: str
    platform: str
    backend: str
    max_batch_size: int
    default_model_filename: str
    inputs: list[dict[str, Any]] = field(default_factory=list)
    outputs: list[dict[str, Any]] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)


def validate_path(path: str, index: int) -> None:
    """Reject paths that could escape the model directory or are not portable."""
    where = f"files[{index}].path"
    if "\\" in path:
        raise InvalidRequest(f"path {path!r}: backslashes are not allowed", field=where)
    if path.startswith("/") or (len(path) > 1 and path[1] == ":"):
        raise InvalidRequest(f"path {path!r}: absolute paths are not allowed", field=where)
    segments = path.split("/")
    if any(seg == "" for seg in segments):
        raise InvalidRequest(f"path {path!r}: empty path segment", field=where)
    if any(seg in (".", "..") for seg in segments):
        raise InvalidRequest(f"path {path!r}: '.' and '..' are not allowed", field=where)
    check_text(path, f"path {path!r}", where)  # controls (C0, C1), bidi overrides
    if any(len(seg.encode()) > MAX_SEGMENT for seg in segments):
        raise InvalidRequest(
            f"path {path!r}: a name is longer than {MAX_SEGMENT} bytes", field=where
        )


def validate_layout(paths: list[str], version: str) -> None:
    """``config.pbtxt`` plus files under ``<version>/`` only, each path once."""
    seen: set[str] = set()
    for i, path in enumerate(paths):
        validate_path(path, i)
        if path in seen:
            raise InvalidRequest(f"path {path!r} is listed twice", field=f"files[{i}].path")
        seen.add(path)
        if path != CONFIG_FILE and not path.startswith(f"{version}/"):
            raise InvalidRequest(
                f"path {path!r}: files must be {CONFIG_FILE} or under {version}/",
                field=f"files[{i}].path",
            )
    for i, path in enumerate(paths):  # a file cannot also be a directory of another file
        parts = path.split("/")
        for cut in range(1, len(parts)):
            if "/".join(parts[:cut]) in seen:
                raise InvalidRequest(
                    f"path {path!r} is inside {'/'.join(parts[:cut])!r}, which is a file",
                    field=f"files[{i}].path",
                )
    if CONFIG_FILE not in seen:
        raise InvalidRequest(f"{CONFIG_FILE} is missing from the upload", field="files")
    if not any(p.startswith(f"{version}/") for p in seen):
        raise InvalidRequest(f"the version directory {version}/ has no files", field="files")


def renumber(files: list[FileSpec], version: str) -> list[FileSpec]:
    """Files of an upload without a version number, moved to the assigned ``<version>/``.

    A client pushing ``model_repository/add_sub`` sends ``1/model.py``; when it lets the
    control plane pick the number, that directory becomes the picked one.
    """
    dirs = {f.path.split("/", 1)[0] for f in files if f.path != CONFIG_FILE}
    if len(dirs) != 1 or not next(iter(dirs)).isdigit():
        return files
    src = next(iter(dirs))
    return [
        f
        if f.path == CONFIG_FILE
        else f.model_copy(update={"path": f"{version}/{f.path[len(src) + 1 :]}"})
        for f in files
    ]


def parse_config(text: str, model_name: str) -> ParsedConfig:
    """Parse ``config.pbtxt`` as Triton's ModelConfig; ``name`` must equal the model name."""
    cfg = model_config_pb2.ModelConfig()
    try:
        text_format.Parse(text, cfg)
    except text_format.ParseError as exc:
        raise InvalidRequest(f"{CONFIG_FILE} does not parse: {exc}", field=CONFIG_FILE) from exc
    if cfg.name and cfg.name != model_name:
        raise InvalidRequest(
            f"{CONFIG_FILE} names the model {cfg.name!r}, not {model_name!r}", field=CONFIG_FILE
        )
    validate_config(cfg)

    def tensors(items: Any) -> list[dict[str, Any]]:
        return [
            {
                "name": t.name,
                "datatype": wire_datatype(model_config_pb2.DataType.Name(t.data_type)),
                "dims": [int(d) for d in t.dims],
                "optional": bool(getattr(t, "optional", False)),
            }
            for t in items
        ]

    return ParsedConfig(
        name=cfg.name or model_name,
        platform=cfg.platform,
        backend=cfg.backend,
        max_batch_size=int(cfg.max_batch_size),
        default_model_filename=cfg.default_model_filename,
        inputs=tensors(cfg.input),
        outputs=tensors(cfg.output),
        config=json_format.MessageToDict(cfg, preserving_proto_field_name=True),
    )


def _field(name: str) -> str:
    return f"{CONFIG_FILE}.{name}"


def validate_config(cfg: Any) -> None:
    """What Triton would refuse at load time, refused at upload instead (422, field named).

    Known backend or platform (and the two agree); inputs and outputs with unique names, a
    datatype, and dims of -1 or >= 1 that fit ``MAX_DIMS`` with the batch dimension;
    ``max_batch_size`` >= 0, > 0 for dynamic batching and >= every preferred batch size;
    ``default_model_filename`` a plain file name.
    """
    backend, platform = cfg.backend, cfg.platform
    if not backend and not platform:
        raise InvalidRequest(
            f"{CONFIG_FILE} names neither a backend nor a platform", field=_field("backend")
        )
    if backend and backend not in KNOWN_BACKENDS:
        raise InvalidRequest(
            f"unknown backend {backend!r} (known: {', '.join(sorted(KNOWN_BACKENDS))})",
            field=_field("backend"),
        )
    if platform:
        if platform not in KNOWN_PLATFORMS:
            raise InvalidRequest(
                f"unknown platform {platform!r} (known: {', '.join(sorted(KNOWN_PLATFORMS))})",
                field=_field("platform"),
            )
        if backend and KNOWN_PLATFORMS[platform] != backend:
            raise InvalidRequest(
                f"platform {platform!r} is not served by backend {backend!r}",
                field=_field("platform"),
            )
    name = cfg.default_model_filename
    if name and ("/" in name or "\\" in name or name in (".", "..")):
        raise InvalidRequest(
            f"default_model_filename {name!r} must be a plain file name",
            field=_field("default_model_filename"),
        )
    mbs = int(cfg.max_batch_size)
    if mbs < 0:
        raise InvalidRequest("max_batch_size must be >= 0", field=_field("max_batch_size"))
    if cfg.HasField("dynamic_batching"):
        if mbs == 0:
            raise InvalidRequest(
                "dynamic_batching needs max_batch_size > 0", field=_field("max_batch_size")
            )
        for size in cfg.dynamic_batching.preferred_batch_size:
            if size < 1 or size > mbs:
                raise InvalidRequest(
                    f"preferred_batch_size {size} is not within 1..max_batch_size ({mbs})",
                    field=_field("dynamic_batching.preferred_batch_size"),
                )
    if platform == "ensemble":
        return  # an ensemble's tensors follow its steps
    for kind, items in (("input", cfg.input), ("output", cfg.output)):
        if not items:
            raise InvalidRequest(f"{CONFIG_FILE} declares no {kind}", field=_field(kind))
        names: set[str] = set()
        for i, t in enumerate(items):
            where = f"{kind}[{i}]"
            if not t.name:
                raise InvalidRequest(f"{where} has no name", field=_field(f"{where}.name"))
            if t.name in names:
                raise InvalidRequest(
                    f"{kind} {t.name!r} is declared twice", field=_field(f"{where}.name")
                )
            names.add(t.name)
            if t.data_type == model_config_pb2.TYPE_INVALID:
                raise InvalidRequest(
                    f"{kind} {t.name!r} has no data_type", field=_field(f"{where}.data_type")
                )
            dims = list(t.dims)
            if not dims and not t.HasField("reshape"):
                raise InvalidRequest(
                    f"{kind} {t.name!r} has no dims (use dims: [1] with reshape for scalars)",
                    field=_field(f"{where}.dims"),
                )
            if any(d == 0 or d < -1 for d in dims):
                raise InvalidRequest(
                    f"{kind} {t.name!r}: dims must be -1 (variable) or >= 1, not {dims}",
                    field=_field(f"{where}.dims"),
                )
            if len(dims) + (1 if mbs > 0 else 0) > MAX_DIMS:
                raise InvalidRequest(
                    f"{kind} {t.name!r} has more than {MAX_DIMS} dimensions with the batch",
                    field=_field(f"{where}.dims"),
                )


def check_default_model_file(parsed: ParsedConfig, paths: list[str], version: str) -> None:
    """The file (or directory) the backend loads must be part of the upload."""
    wanted = parsed.default_model_filename
    if not wanted:
        key = parsed.backend or parsed.platform
        if key not in DEFAULT_MODEL_FILES:
            return  # a custom backend: its file names are its own business
        wanted = DEFAULT_MODEL_FILES[key] or ""
        if not wanted:
            return
    target = f"{version}/{wanted}"
    if not any(p == target or p.startswith(target + "/") for p in paths):
        raise InvalidRequest(
            f"the backend {parsed.backend or parsed.platform!r} loads {target}, "
            "which is not part of the upload",
            field="files",
        )
