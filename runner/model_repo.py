"""The local Triton model repository (until model sync lands): which models, which version.

Layout: ``<repo>/<model>/config.pbtxt`` and numeric version directories; the version
served is the highest number.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
