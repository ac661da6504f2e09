"""What a store holds, store-neutrally: for tests that check "nothing was stored"."""

from __future__ import annotations

from typing import Any

from control_plane.storage import definitions
from control_plane.storage.stores import Stores


def stored_items(stores: Stores, settings: Any) -> dict[str, int]:
    """Items per table: the SQLite tables of the embedded store, or the DynamoDB tables."""
    if stores.kind == "sqlite":
        conn = stores.extra["database"].read()
        names = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        count = 'SELECT COUNT(*) FROM "{}"'  # names from sqlite_master, not from input
        return {n: int(conn.execute(count.format(n)).fetchone()[0]) for n in names}
    dynamodb = stores.extra["dynamodb"]
    return {
        name: int(dynamodb.scan(TableName=settings.table(name), Select="COUNT")["Count"])
        for name in definitions.TABLES
    }
