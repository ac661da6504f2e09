"""``gpufleet._entry``, the target of console scripts generated before the split
distributions (distributions/): which extra to install, not a traceback (a real interpreter
whose import of the runner's dependency fails)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

BLOCK = """
import builtins, sys
real = builtins.__import__
def fake(name, *args, **kw):
    if name.split(".")[0] in {blocked!r}:
        raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
    return real(name, *args, **kw)
builtins.__import__ = fake
from gpufleet._entry import {entry}
{entry}()
"""


@pytest.mark.parametrize(
    ("entry", "blocked", "extra"),
    [
        ("runner_main", {"docker", "pydantic_settings"}, "runner"),
        ("control_plane_main", {"starlette", "pydantic_settings"}, "control-plane"),
    ],
)
def test_missing_extra_is_named(entry: str, blocked: set[str], extra: str) -> None:
    code = BLOCK.format(blocked=sorted(blocked), entry=entry)
    r = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 2, r.stderr
    assert f"pip install 'gpufleet[{extra}]'" in r.stderr and "Traceback" not in r.stderr


def test_with_the_extras_the_entry_points_run() -> None:
    r = subprocess.run(
        [sys.executable, "-c", "from gpufleet._entry import runner_main; runner_main()", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0 and "start" in r.stdout
