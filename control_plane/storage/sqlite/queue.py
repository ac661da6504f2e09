"""SQLite adapter of the queue indexes, with the DynamoDB adapter's semantics.

- ``queue_entries`` (``shard`` = ``<model>#<n>``, ``sk``): only claimable jobs, so a lease
  reads the first rows of a few shards whatever the number of finished jobs.
- ``markers`` (``shard`` = ``lease#<n>`` | ``ttl#<n>``, ``sk`` = ``<instant_ms>#<job_id>``):
  lease-expiry and queue-TTL markers; the sweep reads only the due ones (``sk < before``).
  (Key formats: ``storage/queue_keys.py``, shared with the DynamoDB adapter.)
- ``queue_depth`` (``model``, ``shard``): one counter per queue shard, changed by whoever
  wins a job transition.

The three are ``WITHOUT ROWID`` tables clustered on their key: a head or sweep read is one
range scan of the primary key. As with DynamoDB, each call is one statement on one key (or a
batch in one transaction); the job item stays the source of truth and readers verify entries
and markers against it. Writes join the transaction of an open ``SqliteJobRecordStore.atomic()``.
"""

from __future__ import annotations

from control_plane.storage.protocols import Marker, QueueEntry, QueueKeys
from control_plane.storage.queue_keys import QUEUE_KEYS, read_entry
from control_plane.storage.sqlite.db import Database

DDL: list[str] = [
    """CREATE TABLE IF NOT EXISTS queue_entries (
        shard TEXT NOT NULL,
        sk TEXT NOT NULL,
        job_id TEXT NOT NULL,
        version TEXT NOT NULL,
        region TEXT NOT NULL,
        ttl_deadline REAL NOT NULL,
        token TEXT NOT NULL,
        timeout_s INTEGER NOT NULL,
        PRIMARY KEY (shard, sk)
    ) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS markers (
        shard TEXT NOT NULL,
        sk TEXT NOT NULL,
        job_id TEXT NOT NULL,
        token TEXT NOT NULL,
        PRIMARY KEY (shard, sk)
    ) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS queue_depth (
        model TEXT NOT NULL,
        shard INTEGER NOT NULL,
        depth INTEGER NOT NULL,
        PRIMARY KEY (model, shard)
    ) WITHOUT ROWID""",
]

_ENTRY_COLUMNS = "shard, sk, job_id, version, region, ttl_deadline, token, timeout_s, tenant"
_ENTRY_VALUES = f"({_ENTRY_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
_ENQUEUE = (
    "INSERT INTO queue_entries " + _ENTRY_VALUES + " ON CONFLICT (shard, sk) DO UPDATE SET"
    " job_id = excluded.job_id, version = excluded.version, region = excluded.region,"
    " ttl_deadline = excluded.ttl_deadline, timeout_s = excluded.timeout_s,"
    " tenant = excluded.tenant"
    " WHERE queue_entries.token = excluded.token"
)
_PUT_ENTRY = "INSERT OR REPLACE INTO queue_entries " + _ENTRY_VALUES
_HEAD = f"SELECT {_ENTRY_COLUMNS} FROM queue_entries WHERE shard = ?"  # noqa: S608 - constant
_HEAD_AFTER = _HEAD + " AND sk > ? ORDER BY sk LIMIT ?"
_HEAD += " ORDER BY sk LIMIT ?"
_REMOVE = "DELETE FROM queue_entries WHERE shard = ? AND sk = ? AND token = ?"

# A few rows are written with ``execute`` each: sqlite3's ``executemany`` costs ~100 us of
# CPU more per call than an ``execute`` (measured: the two markers a commit deletes), which
# only pays back over many rows.
SMALL_BATCH = 4
_PUT_MARKER = "INSERT OR REPLACE INTO markers (shard, sk, job_id, token) VALUES (?, ?, ?, ?)"
_DELETE_MARKER = "DELETE FROM markers WHERE shard = ? AND sk = ?"
_DUE = "SELECT shard, sk, job_id, token FROM markers WHERE shard = ? AND sk < ? ORDER BY sk LIMIT ?"
_DUE_AFTER = (
    "SELECT shard, sk, job_id, token FROM markers WHERE shard = ? AND sk < ? AND sk > ?"
    " ORDER BY sk LIMIT ?"
)

_ADD_DEPTH = """INSERT INTO queue_depth (model, shard, depth) VALUES (?, ?, ?)
    ON CONFLICT (model, shard) DO UPDATE SET depth = depth + excluded.depth"""
_DEPTH = "SELECT COALESCE(SUM(depth), 0) FROM queue_depth WHERE model = ?"
_ALL_DEPTHS = "SELECT model, SUM(depth) FROM queue_depth GROUP BY model ORDER BY model"


def _entry_row(e: QueueEntry) -> tuple[str, str, str, str, str, float, str, int, str]:
    return (
        e.shard,
        e.sk,
        e.job_id,
        e.version,
        e.region,
        e.ttl_deadline,
        e.token,
        e.timeout_s,
        e.tenant,
    )


class SqliteQueueStore:
    """``QueueStore`` on ``queue_entries``, ``markers`` and ``queue_depth``.

    - ``enqueue``: write the entry iff its key is free or holds the same token (a retry of the
      same enqueue); False when the key holds another token (someone else's enqueue).
    - ``enqueue_many``: unconditional puts of fresh keys, one transaction.
    - ``head``: up to ``limit`` entries of a shard in ascending ``sk`` (priority, then FIFO),
      strictly after ``after_sk`` when given.
    - ``remove_entry``: delete iff the entry still carries ``token`` (never a newer entry).
    - ``put_marker`` / ``put_markers`` / ``delete_marker`` / ``delete_markers``: unconditional
      puts / deletes (a batch: one transaction).
    - ``due_markers``: up to ``limit`` markers of a shard with ``sk < before_sk`` (exclusive),
      ascending, strictly after ``after_sk`` when given.
    - ``add_depth``: atomic ``+= delta`` on the counter of one (model, shard) (0: no write);
      ``depth`` / ``all_depths``: sums over a model's shards, never below 0.
    """

    def __init__(self, db: Database) -> None:
        self._db = db

    @property
    def keys(self) -> QueueKeys:
        """The key formats, the DynamoDB adapter's (``queue_keys.py``)."""
        return QUEUE_KEYS

    # ------------------------------------------------------------------ queue entries
    def enqueue(self, entry: QueueEntry) -> bool:
        """Write an entry unless the same key holds another token (someone else's enqueue)."""
        row = _entry_row(entry)
        with self._db.writing("enqueue") as conn:
            return conn.execute(_ENQUEUE, row).rowcount == 1

    def enqueue_many(self, entries: list[QueueEntry]) -> None:
        """Write fresh entries (new random keys) in one transaction."""
        rows = [_entry_row(e) for e in entries]
        with self._db.writing("enqueue batch") as conn:
            conn.executemany(_PUT_ENTRY, rows)

    def head(self, shard: str, limit: int, after_sk: str | None = None) -> list[QueueEntry]:
        """The first ``limit`` entries of a shard (after ``after_sk``) in key order."""
        with self._db.reading("read queue") as conn:
            if after_sk is None:
                rows = conn.execute(_HEAD, (shard, limit)).fetchall()
            else:
                rows = conn.execute(_HEAD_AFTER, (shard, after_sk, limit)).fetchall()
        return [read_entry(*r) for r in rows] if rows else []

    def remove_entry(self, shard: str, sk: str, token: str) -> None:
        """Delete an entry if it still carries ``token`` (never someone else's newer entry)."""
        with self._db.writing("remove queue entry") as conn:
            conn.execute(_REMOVE, (shard, sk, token))

    # ------------------------------------------------------------------ markers
    def put_marker(self, marker: Marker) -> None:
        row = (marker.shard, marker.sk, marker.job_id, marker.token)
        with self._db.writing("put marker") as conn:
            conn.execute(_PUT_MARKER, row)

    def put_markers(self, markers: list[Marker]) -> None:
        rows = [(m.shard, m.sk, m.job_id, m.token) for m in markers]
        with self._db.writing("put markers") as conn:
            if len(rows) <= SMALL_BATCH:
                for row in rows:
                    conn.execute(_PUT_MARKER, row)
            else:
                conn.executemany(_PUT_MARKER, rows)

    def delete_marker(self, shard: str, sk: str) -> None:
        with self._db.writing("delete marker") as conn:
            conn.execute(_DELETE_MARKER, (shard, sk))

    def delete_markers(self, keys: list[tuple[str, str]]) -> None:
        if not keys:
            return
        with self._db.writing("delete markers") as conn:
            unique = list(dict.fromkeys(keys))
            if len(unique) <= SMALL_BATCH:
                for key in unique:
                    conn.execute(_DELETE_MARKER, key)
            else:
                conn.executemany(_DELETE_MARKER, unique)

    def due_markers(
        self, shard: str, before_sk: str, limit: int, after_sk: str | None = None
    ) -> list[Marker]:
        """Markers of ``shard`` whose sk sorts before ``before_sk`` (oldest first)."""
        with self._db.reading("read markers") as conn:
            if after_sk is None:
                rows = conn.execute(_DUE, (shard, before_sk, limit)).fetchall()
            else:
                rows = conn.execute(_DUE_AFTER, (shard, before_sk, after_sk, limit)).fetchall()
        return [Marker(*r) for r in rows]

    # ------------------------------------------------------------------ depth counters
    def add_depth(self, model: str, shard: int, delta: int) -> None:
        """Atomically add ``delta`` to the counter of one queue shard of ``model``."""
        if delta == 0:
            return
        with self._db.writing("count queue depth") as conn:
            conn.execute(_ADD_DEPTH, (model, shard, delta))

    def depth(self, model: str) -> int:
        """Queued jobs of ``model``: the sum of its shard counters."""
        with self._db.reading("read queue depth") as conn:
            (total,) = conn.execute(_DEPTH, (model,)).fetchone()
        return max(0, int(total))

    def all_depths(self) -> dict[str, int]:
        """model -> queued jobs, for every model with a counter."""
        with self._db.reading("read queue depths") as conn:
            rows = conn.execute(_ALL_DEPTHS).fetchall()
        return {str(model): max(0, int(total)) for model, total in rows}

    def ping(self) -> None:
        """Raises Unavailable when the queue tables cannot be read."""
        with self._db.reading("ping queue") as conn:
            conn.execute("SELECT 1 FROM queue_entries LIMIT 1").fetchall()
            conn.execute("SELECT 1 FROM markers LIMIT 1").fetchall()
