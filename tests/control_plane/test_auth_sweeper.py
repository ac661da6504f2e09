"""The background sweeper of the app lifespan: keeps going after errors, stops on cancel."""

from __future__ import annotations

import asyncio
import logging

import pytest

from control_plane.app import sweep_forever


class FlakySweeper:
    """Implements the ``sweep`` part of the jobs port; fails on its second call."""

    def __init__(self) -> None:
        self.calls = 0

    def sweep(self) -> dict[str, int]:
        self.calls += 1
        if self.calls == 2:
            raise RuntimeError("storage hiccup")
        return {"expired": 1}


async def test_sweeper_survives_errors_and_cancels(caplog: pytest.LogCaptureFixture) -> None:
    jobs = FlakySweeper()
    with caplog.at_level(logging.WARNING, logger="control_plane.app"):
        task = asyncio.create_task(sweep_forever(jobs, 0.01))  # type: ignore[arg-type]
        for _ in range(200):
            if jobs.calls >= 4:
                break
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert jobs.calls >= 4
    assert any("sweep failed" in r.message for r in caplog.records)
