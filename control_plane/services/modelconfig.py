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
    if any(ord(c) < 32 for c in path):
        raise InvalidRequest(f"path {path!r}: control characters are not allowed", field=where)


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
    if cfg.max_batch_size < 0:
        raise InvalidRequest("max_batch_size must be >= 0", field=CONFIG_FILE)

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
