"""add_sub jobs through the SDK for end-to-end tests: random cases, submit, wait, check."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from gpufleet import Client
from gpufleet.wire import JobView

MODEL = "add_sub"

Case = tuple[np.ndarray, np.ndarray]


def make_cases(n: int, seed: int) -> list[Case]:
    """``n`` random (INPUT0, INPUT1) pairs of 1 to 4 rows."""
    rng = np.random.default_rng(seed)
    cases = []
    for _ in range(n):
        rows = int(rng.integers(1, 5))
        a = rng.uniform(-100, 100, (rows, 4)).astype(np.float32)
        b = rng.uniform(-100, 100, (rows, 4)).astype(np.float32)
        cases.append((a, b))
    return cases


def submit(fleet: Client, cases: list[Case], **args: Any) -> list[str]:
    """Batch submits of ``cases`` (100 per call; extra job fields in ``args``); the job ids
    in order."""
    ids: list[str] = []
    for start in range(0, len(cases), 100):
        ids += fleet.submit_batch(
            {"model": MODEL, "inputs": {"INPUT0": a, "INPUT1": b}, **args}
            for a, b in cases[start : start + 100]
        )
    return ids


def wait_all(fleet: Client, ids: list[str], timeout: float) -> list[JobView]:
    """Every job once terminal (or as it is when ``timeout`` runs out)."""
    deadline = time.monotonic() + timeout
    return [fleet.wait(i, timeout=max(1.0, deadline - time.monotonic())) for i in ids]


def check_outputs(fleet: Client, cases: list[Case], views: list[JobView]) -> None:
    """Every job SUCCEEDED with OUTPUT0 = a + b and OUTPUT1 = a - b."""
    for (a, b), view in zip(cases, views, strict=True):
        assert view.status == "SUCCEEDED", (view.id, view.status, view.error, view.attempts)
        out = fleet.outputs(view)
        assert out["OUTPUT0"].shape == a.shape
        np.testing.assert_allclose(out["OUTPUT0"], a + b, rtol=1e-6)
        np.testing.assert_allclose(out["OUTPUT1"], a - b, rtol=1e-6)


def wait_for(what: str, predicate: Any, timeout: float, interval: float = 0.2) -> Any:
    """``predicate()``'s first truthy value, polled; AssertionError after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
