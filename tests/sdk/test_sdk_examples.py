"""Every example in examples/ runs against the real control plane with the fake runner."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.fake_runner import FakeRunner

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _run(name: str, url: str, key: str) -> str:
    env = {**os.environ, "GPUFLEET_URL": url, "GPUFLEET_API_KEY": key}
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / name)],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


EXAMPLE_CASES = [
    ("submit_and_wait.py", "OUTPUT0 [[5.0, 5.0, 5.0, 5.0]]"),
    ("batch.py", "all 10 jobs succeeded"),
    ("async_submit.py", "results [1.0, 2.0"),
    ("numpy_infer.py", "OUTPUT1 float32 (4, 4) ok"),
]


@pytest.mark.parametrize(("name", "expect"), EXAMPLE_CASES)
def test_example(
    name: str, expect: str, cp_url: str, admin_key: str, fake_runner: FakeRunner
) -> None:
    assert expect in _run(name, cp_url, admin_key)


def test_webhook_receiver_example(cp_url: str, admin_key: str, fake_runner: FakeRunner) -> None:
    out = _run("webhook_receiver.py", cp_url, admin_key)
    assert "verified job.completed" in out


def test_every_example_is_run_by_a_test() -> None:
    tested = {"webhook_receiver.py"} | {name for name, _ in EXAMPLE_CASES}
    assert {p.name for p in EXAMPLES.glob("*.py")} == tested
