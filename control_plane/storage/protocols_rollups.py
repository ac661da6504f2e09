"""Per-minute rollups for the console's charts: named numbers per ``(series, minute)``.

A *series* is a name like ``jobs#<tenant>`` or ``gpu``; a *minute* is ``int(epoch_s // 60)``.
Each ``(series, minute)`` holds named values: counters (``add``: summed, so every replica
adds what it saw and the total is the fleet's) and gauges (``put``: last writer wins, for
readings every replica takes alike). Both stores keep a rollup until its ``expires_at``
(a week, see services/rollups.py), then drop it (DynamoDB TTL some time after; SQLite when
later rollups are written). Adapters: ``dynamo_rollups.py`` (table ``rollups``, PK
``series``, SK ``minute``), ``sqlite/rollups.py``; contract: tests/contract/test_rollup_stores.py.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol


class RollupStore(Protocol):
    """Counters and gauges per series and minute. ``Unavailable`` when unreachable."""

    def add(self, series: str, minute: int, counts: Mapping[str, float], expires_at: float) -> None:
        """Add each count to the value of that name (absent: 0), atomically per value:
        concurrent adds from several replicas all count. ``expires_at`` is kept (the latest
        given)."""
        ...

    def put(self, series: str, minute: int, values: Mapping[str, float], expires_at: float) -> None:
        """Set each named value (others of the minute are kept)."""
        ...

    def read(self, series: str, first: int, last: int) -> list[tuple[int, dict[str, float]]]:
        """Every minute of ``series`` in ``[first, last]`` that holds values, ascending, with
        its values (expired ones may still be returned until they are dropped)."""
        ...
