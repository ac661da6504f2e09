"""Records and the store protocol of the capacity autoscaler (services/capacity/).

The SQLite adapter is ``sqlite/capacity.py``, the DynamoDB one ``dynamo_capacity.py``; the
docstrings below are their contract (``tests/contract/test_capacity_stores.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(frozen=True)
class PoolRecord:
    """A pool: its spec (the ``PoolSpec`` wire model as a dict) and when it was written."""

    name: str
    spec: dict[str, Any]
    created_at: float
    updated_at: float


@dataclass(frozen=True)
class CapacityRecord:
    """The fleet's one capacity decision: a JSON document, fenced by ``revision``."""

    revision: int
    decided_at: float
    doc: dict[str, Any]


class CapacityStore(Protocol):
    """Pools, the single capacity decision of the fleet, and a decision log per pool.

    Errors: ``Unavailable`` when the backend cannot be reached. Reads are strongly consistent.
    """

    def put_pool(self, name: str, spec: dict[str, Any], now: float) -> PoolRecord:
        """Create or replace the pool's spec (last write wins); ``created_at`` is kept from
        the first write."""
        ...

    def get_pool(self, name: str) -> PoolRecord | None:
        """The pool, or None."""
        ...

    def list_pools(self) -> list[PoolRecord]:
        """Every pool, sorted by name."""
        ...

    def delete_pool(self, name: str) -> bool:
        """Remove the pool (its log stays until it ages out); False when there was none."""
        ...

    def get_decision(self) -> CapacityRecord | None:
        """The stored decision, or None before the first ``save_decision``."""
        ...

    def save_decision(self, doc: dict[str, Any], decided_at: float, expected_revision: int) -> bool:
        """Store the decision as revision ``expected_revision + 1`` iff the stored revision is
        ``expected_revision`` (0: none stored yet); False when another writer got there first.
        Of concurrent saves on one revision exactly one gets True."""
        ...

    def append_events(self, pool: str, events: list[dict[str, Any]], keep: int) -> None:
        """Add events (each a JSON object with a float ``at``) to the pool's log. The log keeps
        at least the newest ``keep`` events (older ones may be dropped)."""
        ...

    def list_events(self, pool: str, limit: int) -> list[dict[str, Any]]:
        """The newest ``limit`` events of the pool, newest first (events of one append with
        the same ``at``: the last appended first)."""
        ...
