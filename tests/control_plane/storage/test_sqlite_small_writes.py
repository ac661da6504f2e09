"""The embedded store's small-write paths: a few markers written with ``execute`` each (not
``executemany``), and expired idempotency records purged every ``PURGE_EVERY`` claims."""

from __future__ import annotations

from pathlib import Path

from control_plane.storage.protocols import IdempotencyRecord, Marker
from control_plane.storage.sqlite import idempotency as idem_module
from control_plane.storage.sqlite import schema
from control_plane.storage.sqlite.db import Database
from control_plane.storage.sqlite.idempotency import SqliteIdempotencyStore
from control_plane.storage.sqlite.queue import SMALL_BATCH, SqliteQueueStore


def _db(tmp_path: Path) -> Database:
    db = Database(tmp_path / "s.db")
    schema.migrate(db)
    return db


def test_markers_put_and_deleted_alone_or_in_batches(tmp_path: Path) -> None:
    queue = SqliteQueueStore(_db(tmp_path))
    for n in (1, SMALL_BATCH, SMALL_BATCH + 3):
        markers = [Marker("lease#0", f"{n:03d}#{i:03d}", f"job_{i}", "tok") for i in range(n)]
        queue.put_markers(markers)
        assert queue.due_markers("lease#0", "~", 100) == markers
        keys = [(m.shard, m.sk) for m in markers]
        queue.delete_markers(keys + keys[:1])  # a key named twice: deleted once, no error
        assert queue.due_markers("lease#0", "~", 100) == []


def _record(key: str, expires_at: float) -> IdempotencyRecord:
    return IdempotencyRecord(key, "hash", f"job_{key}", 0.0, 0, "tok", expires_at)


def test_expired_idempotency_records_are_purged_every_few_claims(tmp_path: Path) -> None:
    db = _db(tmp_path)
    store = SqliteIdempotencyStore(db)

    def count() -> int:
        return int(db.read().execute("SELECT COUNT(*) FROM idempotency").fetchone()[0])

    for i in range(300):  # expired by t=100, claimed long before
        assert store.claim_key(_record(f"old-{i}", 50.0), now=1.0) is None
    store = SqliteIdempotencyStore(db)  # a restart: the next claim purges at once
    assert count() == 300
    assert store.claim_key(_record("new-0", 1e9), now=100.0) is None
    assert count() == 301 - idem_module.PURGE_LIMIT
    for i in range(1, idem_module.PURGE_EVERY):  # no purge until the next turn
        assert store.claim_key(_record(f"new-{i}", 1e9), now=100.0) is None
    assert count() == 300 - idem_module.PURGE_LIMIT + idem_module.PURGE_EVERY
    for i in range(idem_module.PURGE_EVERY, 4 * idem_module.PURGE_EVERY):
        assert store.claim_key(_record(f"new-{i}", 1e9), now=100.0) is None
    assert count() == 4 * idem_module.PURGE_EVERY  # every expired one gone, the live kept
    # a live key is still refused (the record holding it answered)
    held = store.claim_key(_record("new-0", 1e9), now=100.0)
    assert held is not None and held.job_id == "job_new-0"
