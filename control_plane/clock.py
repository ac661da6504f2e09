"""Time and id helpers. Lease clocks are the control plane's, never the runner's."""

from __future__ import annotations

import math
import secrets
import time
from collections.abc import Callable
from datetime import UTC, datetime

now: Callable[[], float] = time.time
"""Seconds since the epoch (wall clock): ``time.time`` itself, not a function calling it
(read several times per job: one Python call each fewer)."""


def iso(ts: float | None) -> str | None:
    """RFC 3339 UTC string with millisecond precision, or None.

    Exactly ``datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds")`` with
    ``Z`` for ``+00:00`` (microseconds rounded half-even, then truncated to milliseconds),
    but the date and time of day of a second are formatted once (the last 256 seconds seen
    are kept): a job's timestamps are formatted several times per job on the hot path."""
    if ts is None:
        return None
    frac, whole = math.modf(ts)
    us = round(frac * 1e6)  # half-even, as datetime rounds a float timestamp
    second = int(whole)
    if us >= 1_000_000:
        second, us = second + 1, us - 1_000_000
    elif us < 0:
        second, us = second - 1, us + 1_000_000
    text = _iso_seconds.get(second)
    if text is None:
        if len(_iso_seconds) >= 256:
            _iso_seconds.clear()
        text = datetime.fromtimestamp(second, tz=UTC).isoformat(timespec="seconds")[:19]
        _iso_seconds[second] = text
    return f"{text}.{us // 1000:03d}Z"


_iso_seconds: dict[int, str] = {}  # the second -> its date and time of day, recent ones


def new_id(prefix: str, nbytes: int = 12) -> str:
    """An opaque id with a prefix, e.g. ``job_…``; sortable by creation time."""
    return f"{prefix}_{int(time.time() * 1000):012x}{secrets.token_hex(nbytes)}"
