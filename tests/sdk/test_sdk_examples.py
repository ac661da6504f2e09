"""Every example in examples/ runs against the real control plane with the fake runner."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from gpufleet import Client, errors

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


@pytest.mark.parametrize(
    ("name", "expect"),
    [
        ("submit_and_wait.py", "OUTPUT0 [[5.0, 5.0, 5.0, 5.0]]"),
        ("batch.py", "all 10 jobs succeeded"),
        ("async_submit.py", "results [1.0, 2.0"),
        ("numpy_infer.py", "OUTPUT1 float32 (4, 4) ok"),
    ],
)
def test_example(
    name: str, expect: str, cp_url: str, admin_key: str, fake_runner: FakeRunner
) -> None:
    assert expect in _run(name, cp_url, admin_key)


def test_webhook_receiver_example(
    cp_url: str, admin_key: str, fleet: Client, fake_runner: FakeRunner
) -> None:
    try:
        fleet.webhooks.secret()
    except errors.NotFoundError:
        pytest.skip("the control plane has no GET /v1/webhooks/secret yet")
    out = _run("webhook_receiver.py", cp_url, admin_key)
    assert "verified job.completed" in out
