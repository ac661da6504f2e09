"""The embedded store's SQLite database: one file in WAL mode, a connection per thread.

Every adapter in this package runs its statements through :class:`Database`:

- ``db.read()`` gives this thread's connection (autocommit; each SELECT sees a consistent
  snapshot of the last committed state).
- ``with db.write() as conn:`` runs a write transaction (``BEGIN IMMEDIATE`` … ``COMMIT``,
  ``ROLLBACK`` on any exception). SQLite has one writer at a time, so a transaction is
  linearizable: a conditional write is "check in a SELECT/WHERE, write, commit" inside one
  such block, with the same meaning as the DynamoDB adapter's ``ConditionExpression``.
  A single ``UPDATE … WHERE <condition>`` checked with ``rowcount`` is the cheap form.

Durability: ``synchronous=NORMAL`` in WAL mode survives a crash of the process (every
committed transaction is in the WAL file); an OS crash or power loss may lose the last
transactions but never corrupts the file. ``GPUFLEET_SQLITE_SYNCHRONOUS=FULL`` (the
``sqlite_synchronous`` setting) trades speed for power-loss durability.

Schema: each adapter module declares ``DDL`` (its ``CREATE TABLE/INDEX IF NOT EXISTS``
statements); :mod:`control_plane.storage.sqlite.schema` applies them and keeps the schema
version in ``schema_version``: an older file is migrated on open, a newer one refused.

Errors: ``sqlite3.Error`` becomes :class:`control_plane.errors.Unavailable` at the boundary
(:func:`translate`), so no sqlite3 exception reaches a service or handler.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

from control_plane.errors import Unavailable
from control_plane.storage import budget

BUSY_TIMEOUT_MS = 10_000


@contextlib.contextmanager
def translate(what: str) -> Iterator[None]:
    """Turn SQLite failures (locked past the busy timeout, I/O errors) into ``Unavailable``."""
    try:
        with budget.charge(what):
            yield
    except sqlite3.Error as exc:
        raise Unavailable(f"storage error during {what}: {exc}") from exc


class Database:
    """One SQLite file shared by every store of the embedded control plane."""

    def __init__(
        self,
        path: Path | str,
        *,
        synchronous: str = "NORMAL",
        busy_timeout_ms: int = BUSY_TIMEOUT_MS,
    ) -> None:
        self.path = str(path)
        self._synchronous = synchronous
        self._busy_timeout_ms = busy_timeout_ms
        self._local = threading.local()
        self._lock = threading.Lock()
        self._conns: list[sqlite3.Connection] = []
        self._closed = False

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(
            self.path,
            timeout=self._busy_timeout_ms / 1000,
            isolation_level=None,  # autocommit; write() opens transactions explicitly
            check_same_thread=False,
        )
        conn.execute(f"PRAGMA busy_timeout={int(self._busy_timeout_ms)}")
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={self._synchronous}")
        conn.execute("PRAGMA foreign_keys=OFF")
        conn.execute("PRAGMA temp_store=MEMORY")
        with self._lock:
            if self._closed:
                conn.close()
                raise Unavailable("the embedded store is closed")
            self._conns.append(conn)
        return conn

    def read(self) -> sqlite3.Connection:
        """This thread's connection (created on first use)."""
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._connect()
            self._local.conn = conn
        return conn

    @contextlib.contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """A write transaction on this thread's connection (``BEGIN IMMEDIATE``); inside an
        :meth:`atomic` block of this thread it joins that block's transaction instead."""
        conn = self.read()
        if getattr(self._local, "atomic", False):
            yield conn
            return
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:  # also when COMMIT itself failed (disk full, I/O error)
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            raise

    @contextlib.contextmanager
    def atomic(self) -> Iterator[None]:
        """A unit of work: every :meth:`write` on this thread inside the block is one
        transaction, committed at the end or rolled back as a whole (nested blocks join)."""
        if getattr(self._local, "atomic", False):
            yield
            return
        with self.write():
            self._local.atomic = True
            try:
                yield
            finally:
                self._local.atomic = False

    def ping(self) -> None:
        """Raise ``Unavailable`` when the file cannot be read."""
        with translate("ping"):
            self.read().execute("SELECT 1").fetchone()

    def backup(self, dest: Path | str) -> None:
        """A consistent copy of the whole database at ``dest`` (sqlite3's online backup).

        ``dest`` is created 0600 before SQLite opens it: the copy holds every secret of the
        store, so it is never readable by others, not even while it is being written."""
        os.close(os.open(dest, os.O_WRONLY | os.O_CREAT, 0o600))
        os.chmod(dest, 0o600)
        target = sqlite3.connect(str(dest))
        try:
            with translate("backup"):
                self.read().backup(target)
        finally:
            target.close()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            conns, self._conns = self._conns, []
        for conn in conns:
            with contextlib.suppress(sqlite3.Error):
                conn.close()
