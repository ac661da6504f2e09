"""``clock.iso``: the per-second cache formats exactly as ``datetime`` does."""

from __future__ import annotations

import math
import random
from datetime import UTC, datetime

from control_plane.clock import iso


def _reference(ts: float) -> str:
    text = datetime.fromtimestamp(ts, tz=UTC).isoformat(timespec="milliseconds")
    return text.replace("+00:00", "Z")


def test_iso_matches_datetime_on_rounding_edges_and_random_times() -> None:
    rng = random.Random(7)
    values = [0.0, 1.0, -0.5, -1.0000005, 1e9 + 0.9999995, 1e9 + 0.9999994999, 253402300799.9994]
    for _ in range(20_000):
        base = rng.choice([rng.uniform(0, 4e9), 1_764_646_000 + rng.random() * 3])
        values.append(base)
        # half a microsecond from a second or a millisecond boundary: the rounding cases
        values.append(math.floor(base) + rng.choice([0.9999995, 0.0000005, 0.0005, 0.9995]))
    for ts in values:
        assert iso(ts) == _reference(ts), ts


def test_iso_none_and_a_second_boundary_after_the_cache() -> None:
    assert iso(None) is None
    assert iso(1_764_646_000.9994) == "2025-12-02T03:26:40.999Z"
    assert iso(1_764_646_000.9999996) == "2025-12-02T03:26:41.000Z"  # rounds into the next
    assert iso(1_764_646_001.25) == "2025-12-02T03:26:41.250Z"
