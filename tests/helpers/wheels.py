"""The three distributions of distributions/, built into a directory (`make wheels` does the
same): ``{"gpufleet": Path, "gpufleet-control-plane": Path, "gpufleet-runner": Path}``."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DISTRIBUTIONS = {
    "gpufleet": "gpufleet",
    "gpufleet-control-plane": "control-plane",
    "gpufleet-runner": "runner",
}


def build_wheels(dest: Path) -> dict[str, Path]:
    """``pip wheel --no-deps`` of the three projects (hatchling from this environment when
    it has it, else pip's isolated build environment, from pip's cache after the first)."""
    dest.mkdir(parents=True, exist_ok=True)
    isolation = [] if importlib.util.find_spec("hatchling") is None else ["--no-build-isolation"]
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", *isolation,
         "--wheel-dir", str(dest),
         *(str(ROOT / "distributions" / d) for d in DISTRIBUTIONS.values())],
        check=True,
        capture_output=True,
        timeout=600,
    )  # fmt: skip
    out = {}
    for name in DISTRIBUTIONS:
        (wheel,) = dest.glob(f"{name.replace('-', '_')}-*.whl")
        out[name] = wheel
    return out
