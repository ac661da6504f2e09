"""Hatch metadata hook shared by the three distributions built from this repository
(distributions/*/pyproject.toml): the version comes from one place, sdk/gpufleet/_version.py, and
so do the pins between the distributions (``gpufleet-runner`` needs ``gpufleet`` of the same
version; ``gpufleet[runner]`` is ``gpufleet-runner`` of the same version).

Options (``[tool.hatch.metadata.hooks.custom]`` of each pyproject):

- ``dependencies``: the third-party requirements;
- ``pinned``: distributions of this repository required at the same version;
- ``pinned-extras``: ``{extra: [distribution, …]}`` of this repository, at the same version.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from hatchling.metadata.plugin.interface import MetadataHookInterface

VERSION_FILE = Path(__file__).resolve().parent.parent / "sdk" / "gpufleet" / "_version.py"


def version() -> str:
    found = re.search(r'^__version__ = "([^"]+)"', VERSION_FILE.read_text(), re.MULTILINE)
    if found is None:
        raise ValueError(f"no __version__ in {VERSION_FILE}")
    return found[1]


class PinnedMetadataHook(MetadataHookInterface):
    def update(self, metadata: dict[str, Any]) -> None:
        v = version()
        metadata["version"] = v
        deps = list(self.config.get("dependencies", []))
        metadata["dependencies"] = deps + [f"{name}=={v}" for name in self.config.get("pinned", [])]
        extras = self.config.get("pinned-extras", {})
        if extras:
            metadata["optional-dependencies"] = {
                extra: [f"{name}=={v}" for name in names] for extra, names in extras.items()
            }
