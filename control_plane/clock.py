"""Time and id helpers. Lease clocks are the control plane's, never the runner's."""

from __future__ import annotations

import secrets
import time
from datetime import UTC, datetime


def now() -> float:
    """Seconds since the epoch (wall clock)."""
    return time.time()


def iso(ts: float | None) -> str | None:
    """RFC 3339 UTC string with millisecond precision, or None."""
    if ts is None:
        return None
    return (
        datetime.fromtimestamp(ts, tz=UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    )


def new_id(prefix: str, nbytes: int = 12) -> str:
    """An opaque id with a prefix, e.g. ``job_…``; sortable by creation time."""
    return f"{prefix}_{int(time.time() * 1000):012x}{secrets.token_hex(nbytes)}"
