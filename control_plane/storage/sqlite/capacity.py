"""SQLite adapter of the capacity store (pools, the fleet's capacity decision, the log).

Same meaning as ``dynamo_capacity.py``; one table per kind of item:

- ``pools``              the spec of each pool (JSON)
- ``capacity_decision``  the single capacity decision (row ``id = 1``), fenced by ``revision``
- ``capacity_events``    the decision log, ``seq`` orders events appended at the same ``at``;
                         trimmed to the newest ``keep`` per pool on each append
"""

from __future__ import annotations

import json
from typing import Any

from control_plane.storage.protocols_capacity import CapacityRecord, PoolRecord
from control_plane.storage.sqlite.db import Database, translate

DDL: list[str] = [
    """CREATE TABLE IF NOT EXISTS pools (
        name TEXT PRIMARY KEY,
        spec TEXT NOT NULL,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS capacity_decision (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        revision INTEGER NOT NULL,
        decided_at REAL NOT NULL,
        doc TEXT NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS capacity_events (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        pool TEXT NOT NULL,
        at REAL NOT NULL,
        doc TEXT NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS capacity_events_by_pool ON capacity_events (pool, at, seq)",
]


def _json(v: Any) -> str:
    return json.dumps(v, separators=(",", ":"))


class SqliteCapacityStore:
    """``CapacityStore`` on the embedded SQLite file (conditions as in the protocol)."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def put_pool(self, name: str, spec: dict[str, Any], now: float) -> PoolRecord:
        with self._db.writing("put pool") as conn:
            conn.execute(
                "INSERT INTO pools (name, spec, created_at, updated_at) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (name) DO UPDATE SET spec = excluded.spec, "
                "updated_at = excluded.updated_at",
                (name, _json(spec), now, now),
            )
            row = conn.execute(
                "SELECT name, spec, created_at, updated_at FROM pools WHERE name = ?", (name,)
            ).fetchone()
        return _pool(row)

    def get_pool(self, name: str) -> PoolRecord | None:
        with translate("get pool"):
            row = (
                self._db.read()
                .execute(
                    "SELECT name, spec, created_at, updated_at FROM pools WHERE name = ?", (name,)
                )
                .fetchone()
            )
        return None if row is None else _pool(row)

    def list_pools(self) -> list[PoolRecord]:
        with translate("list pools"):
            rows = (
                self._db.read()
                .execute("SELECT name, spec, created_at, updated_at FROM pools ORDER BY name")
                .fetchall()
            )
        return [_pool(r) for r in rows]

    def delete_pool(self, name: str) -> bool:
        with self._db.writing("delete pool") as conn:
            return conn.execute("DELETE FROM pools WHERE name = ?", (name,)).rowcount == 1

    def get_decision(self) -> CapacityRecord | None:
        with translate("get capacity decision"):
            row = (
                self._db.read()
                .execute("SELECT revision, decided_at, doc FROM capacity_decision WHERE id = 1")
                .fetchone()
            )
        if row is None:
            return None
        return CapacityRecord(int(row[0]), float(row[1]), json.loads(row[2]))

    def save_decision(self, doc: dict[str, Any], decided_at: float, expected_revision: int) -> bool:
        values = (expected_revision + 1, decided_at, _json(doc))
        with self._db.writing("save capacity decision") as conn:
            if expected_revision == 0:
                cur = conn.execute(
                    "INSERT INTO capacity_decision (id, revision, decided_at, doc) "
                    "VALUES (1, ?, ?, ?) ON CONFLICT (id) DO NOTHING",
                    values,
                )
            else:
                cur = conn.execute(
                    "UPDATE capacity_decision SET revision = ?, decided_at = ?, doc = ? "
                    "WHERE id = 1 AND revision = ?",
                    (*values, expected_revision),
                )
            return cur.rowcount == 1

    def append_events(self, pool: str, events: list[dict[str, Any]], keep: int) -> None:
        if not events:
            return
        with self._db.writing("append capacity events") as conn:
            conn.executemany(
                "INSERT INTO capacity_events (pool, at, doc) VALUES (?, ?, ?)",
                [(pool, float(e["at"]), _json(e)) for e in events],
            )
            conn.execute(
                "DELETE FROM capacity_events WHERE pool = ? AND seq NOT IN ("
                "SELECT seq FROM capacity_events WHERE pool = ? "
                "ORDER BY at DESC, seq DESC LIMIT ?)",
                (pool, pool, max(keep, 0)),
            )

    def list_events(self, pool: str, limit: int) -> list[dict[str, Any]]:
        with translate("list capacity events"):
            rows = (
                self._db.read()
                .execute(
                    "SELECT doc FROM capacity_events WHERE pool = ? "
                    "ORDER BY at DESC, seq DESC LIMIT ?",
                    (pool, max(limit, 0)),
                )
                .fetchall()
            )
        return [json.loads(r[0]) for r in rows]


def _pool(row: Any) -> PoolRecord:
    return PoolRecord(str(row[0]), json.loads(row[1]), float(row[2]), float(row[3]))
