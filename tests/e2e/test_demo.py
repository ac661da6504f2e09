"""`make demo`'s script on the run's Docker engine: the main job must keep working."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.docker
@pytest.mark.slow
def test_demo_script_answers_correctly(docker_host: str, triton_image: str) -> None:
    env = dict(os.environ, DOCKER_HOST=docker_host, GPUFLEET_DEMO_BACKEND="docker")
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    proc = subprocess.run(
        ["bash", "scripts/demo.sh"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=420,
        check=False,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert "backend = docker" in out
    assert "20 jobs in" in out
    table = [line for line in proc.stdout.splitlines() if line[:1] in "┏┃┡│└"]
    assert len(table) >= 20 and max(map(len, table)) <= 80, table[:3]  # fits 80 columns
    assert "demo: every answer correct" in out
    assert "/console (sign in with the demo's admin API key: gf_" in out
    assert "demo: stopped everything" in out
