"""Streaming benchmark: what carrying each response costs, per path.

A real embedded control plane process and a real runner process on loopback, the runner on
the mock backend (no Triton: the model's own time is zero, so the figures are the fleet's
cost alone) serving ``token_stream`` (model_repository/). For ``--chunks`` responses per
request, repeated ``--runs`` times:

  generate_stream    SDK ``stream()``: POST /v2/models/token_stream/generate_stream,
                     dispatched over the runner's channel (``stream``/``chunk`` frames)
  job stream         SDK ``submit`` + ``stream_job``: a durable job whose runner stores each
                     chunk (``chunks`` calls, batched while one is in flight) and a client
                     following GET /v1/jobs/{id}/stream
  job stream, late   ``stream_job`` of a finished job (every chunk read back from the store)

The table shows the median time to the first chunk, to the last, and chunks per second.
Everything is stopped by pid at the end.

    .venv/bin/python bench/bench_streaming.py [--chunks 200] [--runs 5]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "sdk")]

import numpy as np  # noqa: E402
from gpufleet import Client  # noqa: E402

from tests.helpers.procs import RunnerProc, start_control_plane  # noqa: E402

MODEL = "token_stream"


def timed(chunks: Iterable[Any]) -> tuple[float, float, int]:
    start = time.perf_counter()
    first = last = float("nan")
    count = 0
    for _ in chunks:
        last = time.perf_counter() - start
        if count == 0:
            first = last
        count += 1
    return first, last, count


def run(name: str, fn: Callable[[], tuple[float, float, int]], runs: int) -> list[str]:
    results = [fn() for _ in range(runs)]
    first = statistics.median(r[0] for r in results) * 1000
    last = statistics.median(r[1] for r in results) * 1000
    count = results[0][2]
    return [name, f"{count}", f"{first:.1f}", f"{last:.1f}", f"{count / (last / 1000):.0f}"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--chunks", type=int, default=200)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-streaming-"))
    cp = start_control_plane(work / "cp", {"GPUFLEET_STREAM_POLL_S": "0.1"})
    runner: RunnerProc | None = None
    try:
        with Client(cp.url, api_key=cp.admin_key, timeout=60) as fleet:
            fleet.models.push(ROOT / "model_repository" / MODEL)
            join = fleet.admin.create_join_token().join_token
            repo = work / "models"
            shutil.copytree(ROOT / "model_repository" / MODEL, repo / MODEL)
            runner = RunnerProc(cp.url, join, work / "runner", "-", "-", repo, backend="mock")
            runner.start()
            runner.wait_ready(timeout=60, model=MODEL)
            params = {"mock_chunks": args.chunks}
            body = {"PROMPT": "x"}
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:  # until the channel serves the model
                st = runner.status()
                if st["dispatch"]["connected"] and any(
                    m["name"] == MODEL and m["state"] == "READY" for m in st["models"]
                ):
                    break
                time.sleep(0.2)
            time.sleep(0.5)
            list(fleet.stream(MODEL, body, parameters=params))  # warm up

            def dispatched() -> tuple[float, float, int]:
                return timed(fleet.stream(MODEL, body, parameters=params))

            done: list[str] = []

            def job_stream() -> tuple[float, float, int]:
                start = time.perf_counter()
                job = fleet.submit(
                    MODEL, {"PROMPT": np.array(["x"], dtype=np.object_)}, parameters=params
                )
                first, last, count = timed(fleet.stream_job(job.id))
                done.append(job.id)
                offset = time.perf_counter() - start - last  # the submit, before the stream
                return first + offset, last + offset, count

            def late() -> tuple[float, float, int]:
                return timed(fleet.stream_job(done[-1]))

            rows = [
                run("generate_stream (dispatch)", dispatched, args.runs),
                run("job stream (live)", job_stream, args.runs),
                run("job stream (late)", late, args.runs),
            ]
    finally:
        if runner is not None:
            runner.terminate(timeout=20)
        cp.stop()
        shutil.rmtree(work, ignore_errors=True)
    head = ["path", "chunks", "first ms", "last ms", "chunks/s"]
    widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(len(head))]
    for r in [head, *rows]:
        print("  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)))


if __name__ == "__main__":
    main()
