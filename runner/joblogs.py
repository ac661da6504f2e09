"""Per-job logs: what the runner said about a job, and what the model printed while it ran.

``JobLogs`` is a logging handler on the runner's root logger: a record logged while a job's
context is bound (``gpufleet._logs``: ``job=<id>``, set by the job loop for the job's task)
is kept for that job, as ``runner | HH:MM:SS.mmm LEVEL message``. The model's output is
Triton's log (container stdout/stderr: the Python backend's prints and ``pb_utils.Logger``
lines, Triton's own messages) between the job's start and end, as ``model  | …`` lines:
jobs that run at the same time on one runner see the same lines (Triton's output does not
say which request printed it). Both are capped at ``MAX_JOB_LOG_BYTES`` (the newest kept)
and sent with the job's result; the control plane keeps them with the job
(``GET /v1/jobs/{id}/logs``).
"""

from __future__ import annotations

import logging
import time
from collections import deque

from gpufleet._logs import context

MAX_JOB_LOG_BYTES = 64 * 1024
TRUNCATED = "… (earlier lines dropped: per-job logs keep the last {} KiB)\n"


def _clock(ts: float) -> str:
    return time.strftime("%H:%M:%S", time.gmtime(ts)) + f".{int(ts % 1 * 1000):03d}"


class _Buffer:
    def __init__(self) -> None:
        self.lines: deque[str] = deque()
        self.size = 0
        self.dropped = False


def cap(lines: list[str], limit: int = MAX_JOB_LOG_BYTES) -> str:
    """``lines`` joined, keeping the newest that fit in ``limit`` bytes."""
    kept: list[str] = []
    size = 0
    for line in reversed(lines):
        n = len(line.encode()) + 1
        if size + n > limit:
            kept.append(TRUNCATED.format(limit // 1024).rstrip("\n"))
            break
        kept.append(line)
        size += n
    return "".join(f"{line}\n" for line in reversed(kept))


class JobLogs(logging.Handler):
    """Collects the log lines of the jobs started and not yet taken (see the module docstring)."""

    def __init__(self, limit: int = MAX_JOB_LOG_BYTES) -> None:
        super().__init__(logging.INFO)
        self._limit = limit
        self._open: dict[str, _Buffer] = {}

    def start(self, job_id: str) -> None:
        self._open[job_id] = _Buffer()

    def take(self, job_id: str) -> list[str]:
        """The runner's lines of ``job_id`` (prefixed), and stop collecting them."""
        buf = self._open.pop(job_id, None)
        if buf is None:
            return []
        lines = list(buf.lines)
        if buf.dropped:
            lines.insert(0, "runner | " + TRUNCATED.format(self._limit // 1024).rstrip("\n"))
        return lines

    def emit(self, record: logging.LogRecord) -> None:
        job = getattr(record, "job", None) or context["job"].get()
        buf = self._open.get(job) if job else None
        if buf is None:
            return
        try:
            line = f"runner | {_clock(record.created)} {record.levelname} {record.getMessage()}"
        except Exception:  # a bad format string: the logging module reports it elsewhere
            return
        buf.lines.append(line)
        buf.size += len(line.encode()) + 1
        while buf.size > self._limit and buf.lines:
            buf.size -= len(buf.lines.popleft().encode()) + 1
            buf.dropped = True


def model_lines(text: str) -> list[str]:
    """Triton's output as ``model  | …`` lines (blank lines dropped)."""
    return [f"model  | {line}" for line in text.splitlines() if line.strip()]
