"""SQLite adapter of the ``Idempotency-Key`` records (table ``idempotency``, key
``<tenant>#<Idempotency-Key>``), with the DynamoDB adapter's semantics.

Timeline of one key: the first submit inserts the record (condition: no record, or an expired
one, ``expires_at < now``); a concurrent or later submit loses that condition and reads the
record back in the same transaction, so exactly one job id is ever bound to a live key.
DynamoDB's TTL deletes expired records; here each claim deletes a few expired ones instead.
A claim made inside ``SqliteJobRecordStore.atomic()`` joins that transaction.
"""

from __future__ import annotations

from control_plane.storage.protocols import IdempotencyRecord
from control_plane.storage.sqlite.db import Database

DDL: list[str] = [
    """CREATE TABLE IF NOT EXISTS idempotency (
        key TEXT PRIMARY KEY,
        body_hash TEXT NOT NULL,
        job_id TEXT NOT NULL,
        created_at REAL NOT NULL,
        shard INTEGER NOT NULL,
        queue_token TEXT NOT NULL,
        expires_at REAL NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS idempotency_by_expiry ON idempotency (expires_at)",
]

_CLAIM = """INSERT INTO idempotency
    (key, body_hash, job_id, created_at, shard, queue_token, expires_at)
    VALUES (?, ?, ?, ?, ?, ?, ?)
    ON CONFLICT (key) DO UPDATE SET body_hash = excluded.body_hash, job_id = excluded.job_id,
    created_at = excluded.created_at, shard = excluded.shard,
    queue_token = excluded.queue_token, expires_at = excluded.expires_at
    WHERE idempotency.expires_at < ?"""
_GET = """SELECT key, body_hash, job_id, created_at, shard, queue_token, expires_at
    FROM idempotency WHERE key = ?"""
# Expired records are dead weight (a claim replaces them anyway): every ``PURGE_EVERY``-th
# claim drops up to ``PURGE_LIMIT`` (8 per claim on average: more than a claim adds, so they
# never pile up; one statement per 16 claims instead of one per claim).
PURGE_EVERY = 16
PURGE_LIMIT = 8 * PURGE_EVERY
_PURGE = """DELETE FROM idempotency WHERE key IN
    (SELECT key FROM idempotency WHERE expires_at < ? ORDER BY expires_at LIMIT ?)"""


class SqliteIdempotencyStore:
    """``IdempotencyStore`` on the ``idempotency`` table.

    - ``claim_key``: bind ``rec.key`` to ``rec`` iff the key is unbound or its record expired
      (``expires_at < now``); returns None when bound now, else the live record holding the
      key (read in the same transaction).
    """

    def __init__(self, db: Database) -> None:
        self._db = db
        self._claims = 0  # claims made through this store (when to purge expired records)

    def claim_key(self, rec: IdempotencyRecord, now: float) -> IdempotencyRecord | None:
        """Bind ``rec.key`` to ``rec``; None when bound now, else the live record holding it."""
        row = (
            rec.key,
            rec.body_hash,
            rec.job_id,
            rec.created_at,
            rec.shard,
            rec.queue_token,
            rec.expires_at,
            now,
        )
        with self._db.writing("claim idempotency key") as conn:
            if conn.execute(_CLAIM, row).rowcount == 1:
                self._claims += 1
                if self._claims % PURGE_EVERY == 1:  # (the first claim too: tests, restarts)
                    conn.execute(_PURGE, (now, PURGE_LIMIT))
                return None
            held = conn.execute(_GET, (rec.key,)).fetchone()
        return IdempotencyRecord(*held)

    def find_key(self, key: str, now: float) -> IdempotencyRecord | None:
        """The live record holding ``key`` (None: unbound or expired)."""
        with self._db.reading("read idempotency key") as conn:
            held = conn.execute(_GET, (key,)).fetchone()
        if held is None or held[6] < now:
            return None
        return IdempotencyRecord(*held)

    def ping(self) -> None:
        """Raises Unavailable when the table cannot be read."""
        with self._db.reading("ping idempotency") as conn:
            conn.execute("SELECT 1 FROM idempotency LIMIT 1").fetchall()
