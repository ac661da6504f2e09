"""Helpers shared by the docker and process backends."""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path

from runner.backends.base import BackendError, InferenceEngine

log = logging.getLogger(__name__)


async def wait_ready(
    engine: InferenceEngine,
    alive: Callable[[], Awaitable[bool]],
    timeout_s: float,
    logs: Callable[[], Awaitable[str]] | None = None,
) -> None:
    """Poll Triton's /v2/health/ready until it answers; BackendError on timeout or death."""
    deadline = time.monotonic() + timeout_s
    while True:
        if await engine.server_ready():
            return
        if not await alive():
            tail = await logs() if logs else ""
            raise BackendError(f"Triton exited before it was ready\n{tail}")
        if time.monotonic() > deadline:
            tail = await logs() if logs else ""
            raise BackendError(f"Triton not ready after {timeout_s:.0f}s\n{tail}")
        await asyncio.sleep(0.25)


def append_log(path: Path, header: str, text: str) -> None:
    """Keep Triton's output: append ``text`` under a header to ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8", errors="replace") as fh:
        fh.write(f"\n===== {header} ({time.strftime('%Y-%m-%dT%H:%M:%S%z')}) =====\n")
        fh.write(text)
        if not text.endswith("\n"):
            fh.write("\n")


OUTPUT_LINES = 5000  # of Triton's output kept in memory for per-job logs


def clock_text(at: float) -> str:
    """``HH:MM:SS.mmm`` (UTC) of a wall-clock time, as per-job log lines show it."""
    return datetime.fromtimestamp(at, UTC).strftime("%H:%M:%S.%f")[:-3]


class FileFollower:
    """The lines appended to a file, each stamped with the wall-clock time it was read.

    The process backend's Triton writes to a file (so that a server outlives a runner that
    dies, and a restarted runner adopts it), and that output has no timestamps of its own: a
    daemon thread reads what was appended every ``interval_s`` and keeps the newest
    ``maxlen`` lines in memory with the time they arrived, so ``between`` can tell which
    lines a job printed (per-job logs), as the docker backend does with Docker's timestamps.
    ``between`` first reads what arrived since the last poll itself, stamping it no later
    than the end asked for (it was written before the call): a line printed just before a
    job ended is not missed or pushed out of its window by the poll's delay.
    """

    def __init__(self, path: Path, interval_s: float = 0.05, maxlen: int = OUTPUT_LINES) -> None:
        self.path = path
        self.interval_s = interval_s
        self._lines: collections.deque[tuple[float, str]] = collections.deque(maxlen=maxlen)
        self._lock = threading.Lock()  # one reader at a time; guards the lines too
        self._pos = 0
        self._inode: int | None = None
        self._pending = b""
        self._last_read = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Follow from the file's current end (what it holds already is not a job's)."""
        if self._thread is not None:
            return
        with self._lock:
            try:
                st = self.path.stat()
                self._pos, self._inode = st.st_size, st.st_ino
            except OSError:
                self._pos, self._inode = 0, None
            self._last_read = time.time()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, daemon=True, name="triton-output")
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout=2)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self._read(None)
            except Exception:  # never let the follower die on one bad read
                log.debug("reading %s failed", self.path, exc_info=True)

    def _read(self, end: float | None) -> None:
        with self._lock:
            now = time.time()
            try:
                st = self.path.stat()
            except OSError:
                self._last_read = now
                return
            if st.st_ino != self._inode or st.st_size < self._pos:  # replaced or truncated
                self._pos, self._inode, self._pending = 0, st.st_ino, b""
            if st.st_size > self._pos:
                with self.path.open("rb") as fh:
                    fh.seek(self._pos)
                    data = fh.read(st.st_size - self._pos)
                self._pos += len(data)
                at = now if end is None else max(self._last_read, min(now, end))
                *lines, self._pending = (self._pending + data).split(b"\n")
                for raw in lines:
                    self._lines.append((at, raw.decode(errors="replace").rstrip("\r")))
            self._last_read = now

    def between(self, start: float, end: float) -> str:
        """The lines that arrived between two wall-clock times, each as ``HH:MM:SS.mmm
        text``."""
        self._read(end)
        with self._lock:
            return "\n".join(
                f"{clock_text(at)} {text}" for at, text in self._lines if start <= at <= end
            )
