"""Small helpers to build and read DynamoDB attribute values (low-level client format).

Conditional writes go through ``control_plane.storage.aws.conditional_write``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any


def str_attr(v: str) -> dict[str, str]:
    return {"S": v}


def num_attr(v: float) -> dict[str, str]:
    f = float(v)
    return {"N": str(int(f)) if f.is_integer() else repr(f)}


def bool_attr(v: bool) -> dict[str, bool]:
    return {"BOOL": v}


def json_attr(v: Any) -> dict[str, str]:
    """A JSON document stored as a string (no Decimal round trips, one size to reason about)."""
    return {"S": json.dumps(v, separators=(",", ":"))}


def read_str(item: dict[str, Any], name: str, default: str | None = None) -> str | None:
    v = item.get(name)
    return default if v is None or "NULL" in v else str(v["S"])


def read_num(item: dict[str, Any], name: str) -> float | None:
    v = item.get(name)
    return None if v is None or "NULL" in v else float(v["N"])


def read_int(item: dict[str, Any], name: str, default: int = 0) -> int:
    v = read_num(item, name)
    return default if v is None else int(v)


def read_bool(item: dict[str, Any], name: str) -> bool:
    v = item.get(name)
    return bool(v and v.get("BOOL"))


def read_json(item: dict[str, Any], name: str) -> Any:
    v = read_str(item, name)
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
