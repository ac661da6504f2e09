"""SQLite adapters of runner registrations (``runners``) and the signed-call replay cache
(``nonces``); same meaning as ``dynamo_runners.py``.

A runner row holds its registration, its HMAC secret in the clear (the control plane must
recompute signatures; keep the database file private), the last heartbeat (JSON text) and its
runtime ``config`` (a JSON object of scalars; a value that is not a bool or a number is stored
as ``str(value)``, as the DynamoDB adapter's config map does).
"""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from control_plane.errors import Conflict
from control_plane.storage.protocols_auth import RunnerRecord
from control_plane.storage.sqlite.db import Database

NONCE_PURGE_BATCH = 64

DDL: list[str] = [
    """CREATE TABLE IF NOT EXISTS runners (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        region TEXT NOT NULL,
        labels TEXT NOT NULL,
        secret TEXT NOT NULL,
        registered_at REAL NOT NULL,
        revoked INTEGER NOT NULL,
        last_heartbeat_at REAL,
        gpus TEXT NOT NULL,
        models TEXT NOT NULL,
        triton TEXT NOT NULL,
        running_jobs TEXT NOT NULL,
        config TEXT NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS nonces (
        key TEXT PRIMARY KEY,
        expires_at INTEGER NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS nonces_expiry ON nonces (expires_at)",
]

# Schema version 4 (schema.py): HMAC secret rotation.
MIGRATION: list[str] = [
    "ALTER TABLE runners ADD COLUMN pending_secret TEXT",
    "ALTER TABLE runners ADD COLUMN previous_secret TEXT",
    "ALTER TABLE runners ADD COLUMN previous_valid_until REAL",
    "ALTER TABLE runners ADD COLUMN secret_set_at REAL",
    "ALTER TABLE runners ADD COLUMN join_token TEXT",
]

_COLUMNS = (
    "id, name, region, labels, secret, registered_at, revoked, last_heartbeat_at, gpus, "
    "models, triton, running_jobs, config, pending_secret, previous_secret, "
    "previous_valid_until, secret_set_at, join_token"
)
_SELECT = f"SELECT {_COLUMNS} FROM runners"  # noqa: S608 - constant


def _scalar(v: Any) -> Any:
    """A config value as the DynamoDB adapter keeps it: bool, number, else its ``str``."""
    return v if isinstance(v, (bool, int, float)) else str(v)


def _record(row: tuple[Any, ...]) -> RunnerRecord:
    (rid, name, region, labels, secret, registered_at, revoked, last) = row[:8]
    gpus, models, triton, running_jobs, config = row[8:13]
    pending, previous, previous_until, secret_set_at, join_token = row[13:]
    return RunnerRecord(
        id=rid,
        name=name,
        region=region,
        labels=json.loads(labels),
        secret=secret,
        registered_at=float(registered_at),
        revoked=bool(revoked),
        last_heartbeat_at=None if last is None else float(last),
        gpus=json.loads(gpus),
        models=json.loads(models),
        triton=json.loads(triton),
        running_jobs=json.loads(running_jobs),
        config=json.loads(config),
        pending_secret=pending,
        previous_secret=previous,
        previous_valid_until=None if previous_until is None else float(previous_until),
        secret_set_at=None if secret_set_at is None else float(secret_set_at),
        join_token=join_token,
    )


def _live(conn: sqlite3.Connection, runner_id: str) -> RunnerRecord | None:
    row = conn.execute(f"{_SELECT} WHERE id = ? AND revoked = 0", (runner_id,)).fetchone()
    return None if row is None else _record(row)


class SqliteRunnerStore:
    """``RunnerStore`` on SQLite.

    Conditions, each checked and applied in one transaction or one conditional statement:

    - ``create_runner``: inserts when the id is new (``Conflict`` otherwise), always as not
      revoked and without a heartbeat (``revoked``/``last_heartbeat_at`` of the record are
      ignored).
    - ``record_heartbeat`` / ``merge_config``: update an existing, unrevoked runner and return
      it as stored now; None when it is missing or revoked. ``merge_config`` sets the given
      fields and keeps the others; an empty patch is a plain ``find_runner`` (revoked too).
    - ``revoke_runner``: sets ``revoked`` (idempotent); False when there is no such runner.

    ``list_runners`` is ordered by ``registered_at``.
    """

    def __init__(self, db: Database) -> None:
        self._db = db

    def create_runner(self, rec: RunnerRecord) -> None:
        with self._db.writing("create runner") as conn:
            cur = conn.execute(
                f"INSERT INTO runners ({_COLUMNS}) "  # noqa: S608 - constant
                "VALUES (?, ?, ?, ?, ?, ?, 0, NULL, ?, ?, ?, ?, ?, NULL, NULL, NULL, ?, ?) "
                "ON CONFLICT DO NOTHING",
                (
                    rec.id,
                    rec.name,
                    rec.region,
                    json.dumps(rec.labels),
                    rec.secret,
                    rec.registered_at,
                    json.dumps(rec.gpus),
                    json.dumps(rec.models),
                    json.dumps(rec.triton),
                    json.dumps(rec.running_jobs),
                    json.dumps({k: _scalar(v) for k, v in rec.config.items()}),
                    rec.secret_set_at,
                    rec.join_token,
                ),
            )
            if cur.rowcount != 1:
                raise Conflict("runner id already exists")

    def find_runner(self, runner_id: str) -> RunnerRecord | None:
        with self._db.reading("find runner") as conn:
            row = conn.execute(f"{_SELECT} WHERE id = ?", (runner_id,)).fetchone()
        return None if row is None else _record(row)

    def record_heartbeat(
        self,
        runner_id: str,
        at: float,
        gpus: list[dict[str, Any]],
        models: list[dict[str, Any]],
        triton: dict[str, Any],
        running_jobs: list[str],
    ) -> RunnerRecord | None:
        with self._db.writing("record heartbeat") as conn:
            cur = conn.execute(
                "UPDATE runners SET last_heartbeat_at = ?, gpus = ?, models = ?, triton = ?, "
                "running_jobs = ? WHERE id = ? AND revoked = 0",
                (
                    at,
                    json.dumps(gpus),
                    json.dumps(models),
                    json.dumps(triton),
                    json.dumps(running_jobs),
                    runner_id,
                ),
            )
            return _live(conn, runner_id) if cur.rowcount == 1 else None

    def merge_config(self, runner_id: str, patch: dict[str, Any]) -> RunnerRecord | None:
        if not patch:
            return self.find_runner(runner_id)
        with self._db.writing("merge config") as conn:
            rec = _live(conn, runner_id)
            if rec is None:
                return None
            config = {**rec.config, **{k: _scalar(v) for k, v in patch.items()}}
            conn.execute(
                "UPDATE runners SET config = ? WHERE id = ?", (json.dumps(config), runner_id)
            )
            return _live(conn, runner_id)

    def offer_secret(self, runner_id: str, secret: str) -> RunnerRecord | None:
        with self._db.writing("offer runner secret") as conn:
            conn.execute(
                "UPDATE runners SET pending_secret = ? "
                "WHERE id = ? AND revoked = 0 AND pending_secret IS NULL",
                (secret, runner_id),
            )
            return _live(conn, runner_id)

    def promote_secret(
        self, runner_id: str, pending: str, at: float, previous_valid_until: float
    ) -> RunnerRecord | None:
        with self._db.writing("promote runner secret") as conn:
            cur = conn.execute(
                "UPDATE runners SET previous_secret = secret, previous_valid_until = ?, "
                "secret = pending_secret, pending_secret = NULL, secret_set_at = ? "
                "WHERE id = ? AND revoked = 0 AND pending_secret = ?",
                (previous_valid_until, at, runner_id, pending),
            )
            return _live(conn, runner_id) if cur.rowcount == 1 else None

    def revoke_runner(self, runner_id: str) -> bool:
        with self._db.writing("revoke runner") as conn:
            cur = conn.execute("UPDATE runners SET revoked = 1 WHERE id = ?", (runner_id,))
            return cur.rowcount == 1

    def list_runners(self) -> list[RunnerRecord]:
        with self._db.reading("list runners") as conn:
            rows = conn.execute(f"{_SELECT} ORDER BY registered_at, id").fetchall()
        return [_record(r) for r in rows]

    def ping(self) -> None:
        self._db.ping()


class SqliteNonceStore:
    """``NonceStore`` on SQLite: a nonce may be stored once until it expires.

    ``remember_nonce`` stores the key (True) when it is absent or its stored entry expired
    (stored ``expires_at < int(now)``); False on a replay of an unexpired key. Times are whole
    seconds, as in the DynamoDB adapter. Each call also deletes a bounded batch of expired
    entries (an index range scan on ``expires_at``), so the table holds live nonces only.
    """

    def __init__(self, db: Database) -> None:
        self._db = db

    def remember_nonce(self, key: str, now: float, expires_at: float) -> bool:
        now_s = int(now)
        with self._db.writing("remember nonce") as conn:
            cur = conn.execute(
                "INSERT INTO nonces (key, expires_at) VALUES (?, ?) ON CONFLICT (key) "
                "DO UPDATE SET expires_at = excluded.expires_at WHERE nonces.expires_at < ?",
                (key, int(expires_at), now_s),
            )
            stored = cur.rowcount == 1
            conn.execute(
                "DELETE FROM nonces WHERE key IN (SELECT key FROM nonces "
                "WHERE expires_at < ? ORDER BY expires_at LIMIT ?)",
                (now_s, NONCE_PURGE_BATCH),
            )
        return stored

    def ping(self) -> None:
        self._db.ping()
