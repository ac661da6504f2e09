"""Per-job logs with the process backend: Triton's output goes to a file without timestamps,
so the runner follows that file and stamps each line as it arrives (``FileFollower``). A real
stand-in ``tritonserver`` process (a shell script printing its own clock) checks that
``output_between`` returns exactly the lines written inside a window. The whole chain with a
real Triton and a printing model is in tests/e2e/test_runner_process.py."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from runner.backends.common import FileFollower
from runner.backends.process_backend import ProcessBackend
from runner.triton_client import TritonClient
from tests.runner.test_process_backend import make_settings

TICKER = """#!/bin/sh
# a stand-in tritonserver: one line every 0.1 s, each naming the time it was written
i=0
while true; do
  i=$((i + 1))
  echo "tick $i $(date +%s.%N)"
  sleep 0.1
done
"""


@pytest.fixture
async def engine() -> AsyncIterator[TritonClient]:
    client = TritonClient(
        protocol="http", http_port=1, grpc_port=2, metrics_port=3, repository_key="k"
    )
    yield client
    await client.aclose()


def written_at(line: str) -> float:
    return float(line.rsplit(" ", 1)[1])


async def test_output_between_is_what_the_process_printed_in_the_window(
    tmp_path: Path, engine: TritonClient
) -> None:
    binary = tmp_path / "bin" / "tritonserver"
    binary.parent.mkdir()
    binary.write_text(TICKER)
    binary.chmod(0o755)
    backend = ProcessBackend(make_settings(tmp_path, tritonserver_path=str(binary)), engine, "k")
    backend._output.start()
    await asyncio.to_thread(backend._start_sync)  # the real spawn (start() would wait for ready)
    try:
        await asyncio.sleep(0.5)
        start = time.time()
        await asyncio.sleep(0.6)
        end = time.time()
        await asyncio.sleep(0.4)  # lines after the window must stay out
        text = await backend.output_between(start, end)
    finally:
        await asyncio.to_thread(backend._terminate, "test over")
        backend._output.stop()
    lines = text.splitlines()
    assert 3 <= len(lines) <= 8, text  # ~6 ticks of 0.1 s (2 shared cores: some slack)
    for line in lines:
        stamp, tick = line.split(" ", 1)
        assert tick.startswith("tick "), line
        assert len(stamp) == len("00:00:00.000"), line
        # written inside the window, give or take the 0.05 s poll
        assert start - 0.15 <= written_at(tick) <= end, (line, start, end)
    numbers = [int(line.split()[2]) for line in lines]
    assert numbers == list(range(numbers[0], numbers[0] + len(numbers))), "a line went missing"
    # the file still has every line (the server outlives a runner that dies: adoption)
    assert "tick 1 " in backend._settings.triton_log_file.read_text()


def test_a_line_written_just_before_the_end_is_kept(tmp_path: Path) -> None:
    log = tmp_path / "triton.log"
    log.write_text("old line, before the follower started\n")
    follower = FileFollower(log, interval_s=30)  # the thread never polls in this test
    follower.start()
    try:
        start = time.time()
        with log.open("a") as fh:
            fh.write("printed by the job\npartial")
        end = time.time()
        assert follower.between(start, end).split(" ", 1)[1] == "printed by the job"
        # read after the job: stamped no later than its end, yet not before the last read
        with log.open("a") as fh:
            fh.write(" line\n")
        later = time.time()
        assert "partial" not in follower.between(start, end)  # ended after this job
        assert "partial line" in follower.between(end, later + 1)
    finally:
        follower.stop()


def test_a_replaced_or_truncated_file_is_followed_from_its_start(tmp_path: Path) -> None:
    log = tmp_path / "triton.log"
    log.write_text("x" * 100 + "\n")
    follower = FileFollower(log, interval_s=30)
    follower.start()
    try:
        start = time.time()
        log.write_text("after truncation\n")  # shorter than the position read so far
        assert "after truncation" in follower.between(start, time.time())
        log.unlink()
        log.write_text("new file\n")
        assert "new file" in follower.between(start, time.time())
    finally:
        follower.stop()
