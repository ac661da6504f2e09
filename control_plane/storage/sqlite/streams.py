"""SQLite adapter of streamed chunks (table ``job_chunks``), with the DynamoDB adapter's
semantics (``storage/protocols_streams.py``).

An append is one write transaction: a ``SELECT`` of the job row conditioned on
``status = 'RUNNING' AND lease_token = ?`` (the fencing token), then one ``INSERT OR REPLACE``
per chunk; no job row, no chunk. DynamoDB's TTL deletes expired chunks; here each append
deletes a few expired ones instead.
"""

from __future__ import annotations

import json
from typing import Any

from control_plane.storage.protocols_streams import ChunkRecord, Position
from control_plane.storage.sqlite.db import Database

DDL: list[str] = [
    """CREATE TABLE IF NOT EXISTS job_chunks (
        job_id TEXT NOT NULL,
        attempt INTEGER NOT NULL,
        seq INTEGER NOT NULL,
        outputs TEXT NOT NULL,
        created_at REAL NOT NULL,
        expires_at REAL NOT NULL,
        PRIMARY KEY (job_id, attempt, seq)
    )""",
    "CREATE INDEX IF NOT EXISTS job_chunks_by_expiry ON job_chunks (expires_at)",
]

_HELD = "SELECT 1 FROM jobs WHERE id = ? AND status = 'RUNNING' AND lease_token = ?"
_PUT = """INSERT OR REPLACE INTO job_chunks (job_id, attempt, seq, outputs, created_at, expires_at)
    VALUES (?, ?, ?, ?, ?, ?)"""
_PURGE = """DELETE FROM job_chunks WHERE rowid IN
    (SELECT rowid FROM job_chunks WHERE expires_at < ? ORDER BY expires_at LIMIT 64)"""
_READ_ALL = """SELECT attempt, seq, outputs, created_at FROM job_chunks WHERE job_id = ?
    ORDER BY attempt, seq LIMIT ?"""
_READ_AFTER = """SELECT attempt, seq, outputs, created_at FROM job_chunks
    WHERE job_id = ? AND (attempt > ? OR (attempt = ? AND seq > ?))
    ORDER BY attempt, seq LIMIT ?"""


class SqliteStreamStore:
    """``StreamStore`` on the ``job_chunks`` table (the jobs table of the same file fences)."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def append_chunks(
        self,
        job_id: str,
        lease_token: str,
        attempt: int,
        chunks: list[tuple[int, list[dict[str, Any]]]],
        now: float,
        expires_at: float,
    ) -> bool:
        rows = [
            (job_id, attempt, seq, json.dumps(outputs, separators=(",", ":")), now, expires_at)
            for seq, outputs in chunks
        ]
        with self._db.writing("append chunks") as conn:
            if conn.execute(_HELD, (job_id, lease_token)).fetchone() is None:
                return False
            conn.executemany(_PUT, rows)
            conn.execute(_PURGE, (now,))
        return True

    def read_chunks(self, job_id: str, after: Position | None, limit: int) -> list[ChunkRecord]:
        with self._db.reading("read chunks") as conn:
            if after is None:
                rows = conn.execute(_READ_ALL, (job_id, limit)).fetchall()
            else:
                a, q = after
                rows = conn.execute(_READ_AFTER, (job_id, a, a, q, limit)).fetchall()
        return [ChunkRecord(job_id, int(a), int(q), json.loads(o), float(c)) for a, q, o, c in rows]

    def ping(self) -> None:
        with self._db.reading("ping chunks") as conn:
            conn.execute("SELECT 1 FROM job_chunks LIMIT 1").fetchall()
