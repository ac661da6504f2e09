"""``Database.write``/``atomic`` and ``translate`` (class-based context managers): commit,
rollback on any exception, nested units of work, errors and the storage budget."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

from control_plane.errors import Unavailable
from control_plane.storage import budget
from control_plane.storage.sqlite.db import Database, translate


@pytest.fixture
def db(tmp_path: Path) -> Database:
    d = Database(tmp_path / "t.db")
    d.read().execute("CREATE TABLE t (k TEXT PRIMARY KEY, v INT)")
    return d


def rows(db: Database) -> list[tuple[str, int]]:
    return db.read().execute("SELECT k, v FROM t ORDER BY k").fetchall()


def test_write_commits_and_rolls_back_on_any_exception(db: Database) -> None:
    with db.write() as conn:
        conn.execute("INSERT INTO t VALUES ('a', 1)")
    with pytest.raises(KeyError), db.write() as conn:
        conn.execute("INSERT INTO t VALUES ('b', 2)")
        raise KeyError("b")
    assert rows(db) == [("a", 1)]
    assert not db.read().in_transaction


def test_a_failed_commit_rolls_back(db: Database) -> None:
    db.read().execute("CREATE TABLE c (id INT PRIMARY KEY, p INT REFERENCES t(v) DEFERRABLE)")
    db.read().execute("PRAGMA foreign_keys=ON")
    db.read().execute("CREATE UNIQUE INDEX tv ON t(v)")
    with pytest.raises(sqlite3.IntegrityError), db.write() as conn:
        conn.execute("PRAGMA defer_foreign_keys=ON")
        conn.execute("INSERT INTO c VALUES (1, 99)")  # fails only at COMMIT
    assert not db.read().in_transaction
    assert db.read().execute("SELECT count(*) FROM c").fetchone() == (0,)


def test_atomic_joins_writes_and_nested_blocks_into_one_transaction(db: Database) -> None:
    with pytest.raises(RuntimeError), db.atomic():
        with db.write() as conn:
            conn.execute("INSERT INTO t VALUES ('a', 1)")
        with db.atomic(), db.write() as conn:  # nested: no commit of its own
            conn.execute("INSERT INTO t VALUES ('b', 2)")
        assert db.read().in_transaction
        raise RuntimeError("undo both")
    assert rows(db) == []
    with db.atomic():
        with db.write() as conn:
            conn.execute("INSERT INTO t VALUES ('a', 1)")
        with db.atomic(), db.write() as conn:
            conn.execute("INSERT INTO t VALUES ('b', 2)")
    assert rows(db) == [("a", 1), ("b", 2)]
    with db.write() as conn:  # the unit of work is over: a write commits on its own again
        conn.execute("INSERT INTO t VALUES ('c', 3)")
    assert not db.read().in_transaction


def test_translate_turns_sqlite_errors_into_unavailable_and_lets_others_through() -> None:
    with (
        pytest.raises(Unavailable, match="storage error during read t") as info,
        translate("read t"),
    ):
        raise sqlite3.OperationalError("database is locked")
    assert isinstance(info.value.__cause__, sqlite3.OperationalError)
    with pytest.raises(KeyError), translate("read t"):
        raise KeyError("x")


def test_translate_charges_the_request_budget_and_refuses_once_spent() -> None:
    token = budget._current.set(budget.Budget(0.5))
    try:
        with translate("first"):
            time.sleep(0.002)
        spent = budget.current()
        assert spent is not None and 0.002 <= spent.spent < 0.5
        spent.spent = 0.5
        ran = False
        with pytest.raises(Unavailable, match="before second"), translate("second"):
            ran = True
        assert not ran
    finally:
        budget._current.reset(token)


def test_writing_commits_rolls_back_and_joins_an_atomic_block(db: Database) -> None:
    """``writing``/``atomic_as``: ``translate`` + ``write``/``atomic`` fused, same meaning."""
    with db.writing("put a") as conn:
        conn.execute("INSERT INTO t VALUES ('a', 1)")
    assert not db.read().in_transaction
    with pytest.raises(KeyError), db.writing("put b") as conn:
        conn.execute("INSERT INTO t VALUES ('b', 2)")
        raise KeyError("x")
    assert rows(db) == [("a", 1)] and not db.read().in_transaction
    with pytest.raises(RuntimeError), db.atomic_as("batch"):
        with db.writing("put c") as conn:
            conn.execute("INSERT INTO t VALUES ('c', 3)")
        with db.atomic_as("nested"), db.writing("put d") as conn:  # joins: no commit
            conn.execute("INSERT INTO t VALUES ('d', 4)")
        assert db.read().in_transaction
        raise RuntimeError("undo the whole unit")
    assert rows(db) == [("a", 1)] and not db.read().in_transaction
    with db.atomic_as("batch"):
        with db.writing("put c") as conn:
            conn.execute("INSERT INTO t VALUES ('c', 3)")
        with db.writing("put d") as conn:
            conn.execute("INSERT INTO t VALUES ('d', 4)")
    assert rows(db) == [("a", 1), ("c", 3), ("d", 4)] and not db.read().in_transaction
    with db.writing("put e") as conn:  # the unit of work is over: commits on its own again
        conn.execute("INSERT INTO t VALUES ('e', 5)")
    assert not db.read().in_transaction


def test_the_fused_forms_translate_errors_and_a_failed_commit_rolls_back(db: Database) -> None:
    with pytest.raises(Unavailable, match="during put a") as info, db.writing("put a") as conn:
        conn.execute("INSERT INTO t VALUES ('a', 1)")
        conn.execute("INSERT INTO t VALUES ('a', 2)")  # IntegrityError
    assert isinstance(info.value.__cause__, sqlite3.IntegrityError)
    assert rows(db) == [] and not db.read().in_transaction
    with pytest.raises(Unavailable, match="during bad read"), db.reading("bad read") as conn:
        conn.execute("SELECT nope FROM t")
    db.read().execute("CREATE TABLE p (k TEXT PRIMARY KEY)")
    db.read().execute("CREATE TABLE c (k TEXT REFERENCES p (k) DEFERRABLE INITIALLY DEFERRED)")
    db.read().execute("PRAGMA foreign_keys=ON")
    with pytest.raises(Unavailable, match="during orphan"), db.writing("orphan") as conn:
        conn.execute("INSERT INTO c VALUES ('x')")  # fails at COMMIT
    assert not db.read().in_transaction
    with pytest.raises(KeyError), db.reading("read t"):
        raise KeyError("x")


def test_the_fused_forms_charge_the_budget_and_refuse_once_spent(db: Database) -> None:
    token = budget._current.set(budget.Budget(0.5))
    try:
        with db.writing("first") as conn:
            conn.execute("INSERT INTO t VALUES ('a', 1)")
            time.sleep(0.002)
        with db.reading("second") as conn:
            conn.execute("SELECT 1").fetchall()
            time.sleep(0.002)
        spent = budget.current()
        assert spent is not None and 0.004 <= spent.spent < 0.5
        spent.spent = 0.5
        for form in (db.writing, db.reading, db.atomic_as):
            with pytest.raises(Unavailable, match="before third"), form("third"):
                raise AssertionError("must not run")
        assert not db.read().in_transaction
    finally:
        budget._current.reset(token)


def test_a_subclass_overriding_write_is_used_by_the_fused_forms(tmp_path: Path) -> None:
    class Counting(Database):
        calls = 0

        def write(self) -> Any:
            self.calls += 1
            return super().write()

    d = Counting(tmp_path / "c.db")
    d.read().execute("CREATE TABLE t (k TEXT PRIMARY KEY, v INT)")
    with d.atomic_as("batch"), d.writing("put") as conn:
        conn.execute("INSERT INTO t VALUES ('a', 1)")
    assert d.calls == 2 and rows(d) == [("a", 1)]
