"""``Metrics.later``: per-request observations are recorded after the answer has left, in a
batch on the event loop within ``DEFER_S``, and a scrape records what is pending first."""

from __future__ import annotations

import asyncio

from control_plane.metrics import DEFER_S, Metrics


def _count(metrics: Metrics, text: bytes | None = None) -> float:
    body = (text if text is not None else metrics.render()).decode()
    for line in body.splitlines():
        if line.startswith("gpufleet_infer_dispatch_duration_seconds_count"):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def _metrics() -> Metrics:
    return Metrics(lambda: {}, lambda: [])


async def test_observations_wait_for_the_batch_on_the_loop() -> None:
    metrics = _metrics()
    for _ in range(3):
        metrics.observe_dispatch("m", "r1", "ok", 0.002)
    # not yet recorded: the registry alone (no flush) shows none
    from prometheus_client import generate_latest

    assert _count(metrics, generate_latest(metrics.registry)) == 0
    await asyncio.sleep(DEFER_S * 3)
    assert _count(metrics, generate_latest(metrics.registry)) == 3


async def test_a_scrape_records_what_is_pending() -> None:
    metrics = _metrics()
    metrics.observe_dispatch("m", "r1", "ok", 0.002)
    metrics.observe_runner_stages("m", {"receive_ms": 0.1, "triton_ms": 0.5, "total_ms": 0.7})
    assert _count(metrics) == 1  # render flushes first
    assert b'gpufleet_infer_runner_stage_seconds_count{model="m",stage="triton"} 1.0' in (
        metrics.render()
    )


def test_without_a_loop_it_records_at_once() -> None:
    metrics = _metrics()
    metrics.observe_dispatch("m", "r1", "ok", 0.002)
    from prometheus_client import generate_latest

    assert _count(metrics, generate_latest(metrics.registry)) == 1
