"""Small helpers to build and read DynamoDB attribute values (low-level client format).

Conditional writes go through ``control_plane.storage.aws.conditional_write``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any


def s(v: str) -> dict[str, str]:
    return {"S": v}


def n(v: float) -> dict[str, str]:
    f = float(v)
    return {"N": str(int(f)) if f.is_integer() else repr(f)}


def b(v: bool) -> dict[str, bool]:
    return {"BOOL": v}


def j(v: Any) -> dict[str, str]:
    """A JSON document stored as a string (no Decimal round trips, one size to reason about)."""
    return {"S": json.dumps(v, separators=(",", ":"))}


def get_s(item: dict[str, Any], name: str, default: str | None = None) -> str | None:
    v = item.get(name)
    return default if v is None or "NULL" in v else str(v["S"])


def get_n(item: dict[str, Any], name: str) -> float | None:
    v = item.get(name)
    return None if v is None or "NULL" in v else float(v["N"])


def get_i(item: dict[str, Any], name: str, default: int = 0) -> int:
    v = get_n(item, name)
    return default if v is None else int(v)


def get_b(item: dict[str, Any], name: str) -> bool:
    v = item.get(name)
    return bool(v and v.get("BOOL"))


def get_j(item: dict[str, Any], name: str) -> Any:
    v = get_s(item, name)
    return None if v is None else json.loads(v)


def paginate(db: Any, op: str, **kwargs: Any) -> Iterator[dict[str, Any]]:
    """Every item of a Query/Scan, page by page."""
    while True:
        page = getattr(db, op)(**kwargs)
        yield from page.get("Items", [])
        last = page.get("LastEvaluatedKey")
        if not last:
            return
        kwargs["ExclusiveStartKey"] = last
