"""SQLite adapter of the console's per-minute rollups (same meaning as ``dynamo_rollups.py``):
one row per ``(series, minute, name)``; expired rows go when later ones are written."""

from __future__ import annotations

import time
from collections.abc import Mapping

from control_plane.storage.sqlite.db import Database, translate

PURGE_EVERY_S = 300.0

DDL: list[str] = [
    """CREATE TABLE IF NOT EXISTS rollups (
        series TEXT NOT NULL,
        minute INTEGER NOT NULL,
        name TEXT NOT NULL,
        value REAL NOT NULL,
        expires_at REAL NOT NULL,
        PRIMARY KEY (series, minute, name)
    )""",
    "CREATE INDEX IF NOT EXISTS rollups_expiry ON rollups (expires_at)",
]

_ADD = (
    "INSERT INTO rollups (series, minute, name, value, expires_at) VALUES (?, ?, ?, ?, ?) "
    "ON CONFLICT (series, minute, name) DO UPDATE SET value = value + excluded.value, "
    "expires_at = MAX(expires_at, excluded.expires_at)"
)
_PUT = (
    "INSERT INTO rollups (series, minute, name, value, expires_at) VALUES (?, ?, ?, ?, ?) "
    "ON CONFLICT (series, minute, name) DO UPDATE SET value = excluded.value, "
    "expires_at = MAX(expires_at, excluded.expires_at)"
)


class SqliteRollupStore:
    """``RollupStore`` on the embedded SQLite file."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self._purged_at = 0.0

    def _write(
        self, sql: str, series: str, minute: int, values: Mapping[str, float], exp: float
    ) -> None:
        rows = [(series, minute, k, float(v), exp) for k, v in values.items()]
        if not rows:
            return
        with self._db.writing("rollup write") as conn:
            conn.executemany(sql, rows)
            now = time.time()
            if now - self._purged_at > PURGE_EVERY_S:
                self._purged_at = now
                conn.execute("DELETE FROM rollups WHERE expires_at < ?", (now,))

    def add(self, series: str, minute: int, counts: Mapping[str, float], expires_at: float) -> None:
        self._write(_ADD, series, minute, counts, expires_at)

    def put(self, series: str, minute: int, values: Mapping[str, float], expires_at: float) -> None:
        self._write(_PUT, series, minute, values, expires_at)

    def read(self, series: str, first: int, last: int) -> list[tuple[int, dict[str, float]]]:
        with translate("rollup read"):
            rows = (
                self._db.read()
                .execute(
                    "SELECT minute, name, value FROM rollups"
                    " WHERE series = ? AND minute BETWEEN ? AND ? ORDER BY minute",
                    (series, first, last),
                )
                .fetchall()
            )
        out: dict[int, dict[str, float]] = {}
        for minute, name, value in rows:
            out.setdefault(int(minute), {})[str(name)] = float(value)
        return sorted(out.items())
