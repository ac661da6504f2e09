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
import functools
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import TypeVar

from control_plane.errors import Unavailable
from control_plane.storage import budget

BUSY_TIMEOUT_MS = 10_000
_T = TypeVar("_T")


class _Translate:
    """See :func:`translate` (a class: entered and left several times per job, where a
    generator-based context manager costs a few microseconds more each time)."""

    __slots__ = ("_budget", "_started", "_what")

    def __init__(self, what: str) -> None:
        self._what = what

    def __enter__(self) -> None:
        spent = budget.current()
        if spent is not None:
            budget.check(spent, self._what)
            self._started = time.monotonic()
        self._budget = spent

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._budget is not None:
            self._budget.spent += time.monotonic() - self._started
        if exc is not None and isinstance(exc, sqlite3.Error):
            raise Unavailable(f"storage error during {self._what}: {exc}") from exc


def translate(what: str) -> contextlib.AbstractContextManager[None]:
    """Turn SQLite failures (locked past the busy timeout, I/O errors) into ``Unavailable``;
    the call's time is charged to the request's storage budget (``budget.charge``)."""
    return _Translate(what)


class _Write:
    """See :meth:`Database.write`."""

    __slots__ = ("_conn", "_db", "_own")

    def __init__(self, db: Database) -> None:
        self._db = db

    def __enter__(self) -> sqlite3.Connection:
        conn = self._conn = self._db.read()
        self._own = not self._db._local.atomic
        if self._own:
            conn.execute("BEGIN IMMEDIATE")
        return conn

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if not self._own:
            return
        conn = self._conn
        if exc is None:
            try:
                conn.execute("COMMIT")
            except BaseException:
                _rollback(conn)  # also when COMMIT itself failed (disk full, I/O error)
                raise
            return
        _rollback(conn)


def _rollback(conn: sqlite3.Connection) -> None:
    if conn.in_transaction:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")


class _Atomic:
    """See :meth:`Database.atomic`."""

    __slots__ = ("_db", "_write")

    def __init__(self, db: Database) -> None:
        self._db = db
        self._write: contextlib.AbstractContextManager[sqlite3.Connection] | None = None

    def __enter__(self) -> None:
        local = self._db._local
        if local.atomic:
            return  # nested: joins the enclosing block
        write = self._db.write()  # (through the method: a subclass may wrap it)
        write.__enter__()
        self._write = write
        local.atomic = True

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool:
        write = self._write
        if write is None:
            return False
        self._db._local.atomic = False
        return bool(write.__exit__(kind, exc, tb))


class _Local(threading.local):
    """This thread's connection and whether an ``atomic`` block is open on it (class
    attributes: the defaults of every thread, read without ``getattr``)."""

    conn: sqlite3.Connection | None = None
    atomic = False


class _Reading(_Translate):
    """See :meth:`Database.reading`."""

    __slots__ = ("_db",)

    def __init__(self, db: Database, what: str) -> None:
        self._db = db
        self._what = what

    def __enter__(self) -> sqlite3.Connection:  # type: ignore[override]
        spent = budget.current()
        if spent is not None:
            budget.check(spent, self._what)
            self._started = time.monotonic()
        self._budget = spent
        conn = self._db._local.conn
        if conn is None:
            try:
                conn = self._db.read()
            except BaseException as exc:
                self.__exit__(type(exc), exc, exc.__traceback__)
                raise
        return conn


class _Writing:
    """See :meth:`Database.writing` (and :meth:`Database.atomic_as` with ``joins``: the
    transaction stays open for the writes of this thread until the block ends)."""

    __slots__ = ("_budget", "_conn", "_db", "_joins", "_own", "_started", "_what")

    def __init__(self, db: Database, what: str, joins: bool = False) -> None:
        self._db = db
        self._what = what
        self._joins = joins

    def __enter__(self) -> sqlite3.Connection:
        spent = budget.current()
        if spent is not None:
            budget.check(spent, self._what)
            self._started = time.monotonic()
        self._budget = spent
        db = self._db
        local = db._local
        own = self._own = not local.atomic
        try:
            conn = local.conn
            if conn is None:
                conn = db.read()
            if own:
                conn.execute("BEGIN IMMEDIATE")
                if self._joins:
                    local.atomic = True
        except BaseException as exc:
            self._charge(exc)
            raise
        self._conn = conn
        return conn

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._own:
            conn = self._conn
            if self._joins:
                self._db._local.atomic = False
            if exc is None:
                try:
                    conn.execute("COMMIT")
                except BaseException as err:
                    _rollback(conn)  # also when COMMIT itself failed (disk full, I/O error)
                    self._charge(err)
                    raise
            else:
                _rollback(conn)
        if self._budget is not None:  # (``_charge``, inlined: once per statement)
            self._budget.spent += time.monotonic() - self._started
        if exc is not None and isinstance(exc, sqlite3.Error):
            raise Unavailable(f"storage error during {self._what}: {exc}") from exc

    def _charge(self, exc: BaseException | None) -> None:
        """Charge the budget; an SQLite error becomes ``Unavailable`` (as ``translate``)."""
        if self._budget is not None:
            self._budget.spent += time.monotonic() - self._started
        if exc is not None and isinstance(exc, sqlite3.Error):
            raise Unavailable(f"storage error during {self._what}: {exc}") from exc


@contextlib.contextmanager
def _chained(what: str, inner: contextlib.AbstractContextManager[_T]) -> Iterator[_T]:
    with translate(what), inner as value:
        yield value


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
        self._local = _Local()
        # ``write()`` overridden (a test counting transactions): the fused forms go through it.
        self._plain = type(self).write is Database.write
        if self._plain:
            # The fused forms straight to their classes: one Python call per statement fewer
            # than through the methods below (same objects, same meaning).
            vars(self).update(
                reading=functools.partial(_Reading, self),
                writing=functools.partial(_Writing, self),
                atomic_as=functools.partial(_Writing, self, joins=True),
            )
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
        conn = self._local.conn
        if conn is None:
            conn = self._connect()
            self._local.conn = conn
        return conn

    def reading(self, what: str) -> contextlib.AbstractContextManager[sqlite3.Connection]:
        """``with translate(what): conn = db.read() …`` as one context manager (the common
        form of a read: one object per statement instead of two calls and a context)."""
        return _Reading(self, what)

    def writing(self, what: str) -> contextlib.AbstractContextManager[sqlite3.Connection]:
        """``with translate(what), db.write() as conn:`` as one context manager, with the
        same meaning (budget check and charge, ``Unavailable`` for SQLite errors, the write
        transaction or the enclosing ``atomic`` block's)."""
        if self._plain:
            return _Writing(self, what)
        return _chained(what, self.write())

    def atomic_as(self, what: str) -> contextlib.AbstractContextManager[None]:
        """``with translate(what), db.atomic():`` as one context manager."""
        if self._plain:
            # (its ``with`` binds the connection; callers of a unit of work take none)
            return _Writing(self, what, True)  # type: ignore[return-value]
        return _chained(what, self.atomic())

    def write(self) -> contextlib.AbstractContextManager[sqlite3.Connection]:
        """A write transaction on this thread's connection (``BEGIN IMMEDIATE``; ``COMMIT``,
        or ``ROLLBACK`` on any exception); inside an :meth:`atomic` block of this thread it
        joins that block's transaction instead."""
        return _Write(self)

    def atomic(self) -> contextlib.AbstractContextManager[None]:
        """A unit of work: every :meth:`write` on this thread inside the block is one
        transaction, committed at the end or rolled back as a whole (nested blocks join)."""
        return _Atomic(self)

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
