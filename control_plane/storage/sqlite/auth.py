"""SQLite adapter of the auth store: API keys, refresh tokens and revoked families, runner join
tokens and the shared JWT signing key (same meaning as ``dynamo_auth.py``).

DynamoDB deletes expired refresh tokens and join tokens with its TTL, some time after
``expires_at``; here each new refresh or join token purges a bounded batch of rows that
expired more than ``PURGE_GRACE_S`` ago (the services check ``expires_at`` themselves, so a
row kept a little longer changes nothing). Revoked families are rare (one per detected
reuse) and are kept: a family must stay revoked as long as any of its tokens is unexpired.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from typing import cast

from gpufleet.wire import Role

from control_plane import clock
from control_plane.errors import Conflict
from control_plane.storage.protocols_auth import ApiKeyRecord, JoinTokenRecord, RefreshRecord
from control_plane.storage.sqlite.db import Database, translate

PURGE_GRACE_S = 86_400.0
PURGE_BATCH = 64

DDL: list[str] = [
    """CREATE TABLE IF NOT EXISTS api_keys (
        id TEXT PRIMARY KEY,
        tenant TEXT NOT NULL,
        role TEXT NOT NULL,
        name TEXT NOT NULL,
        secret_hash TEXT NOT NULL,
        created_at REAL NOT NULL,
        revoked INTEGER NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS refresh_tokens (
        id TEXT PRIMARY KEY,
        secret_hash TEXT NOT NULL,
        family TEXT NOT NULL,
        key_id TEXT NOT NULL,
        tenant TEXT NOT NULL,
        role TEXT NOT NULL,
        used INTEGER NOT NULL,
        expires_at REAL NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS refresh_tokens_expiry ON refresh_tokens (expires_at)",
    """CREATE TABLE IF NOT EXISTS refresh_families (
        family TEXT PRIMARY KEY,
        expires_at REAL NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS join_tokens (
        token_hash TEXT PRIMARY KEY,
        region TEXT NOT NULL,
        labels TEXT NOT NULL,
        expires_at REAL NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS join_tokens_expiry ON join_tokens (expires_at)",
    """CREATE TABLE IF NOT EXISTS signing_key (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        key TEXT NOT NULL
    )""",
]


# Schema version 4 (schema.py): join-token use limits and API key rotation. Join tokens
# stored before it get ``max_uses = 0`` (no limit: they were multi-use when issued).
MIGRATION: list[str] = [
    "ALTER TABLE join_tokens ADD COLUMN max_uses INTEGER NOT NULL DEFAULT 0",
    "ALTER TABLE join_tokens ADD COLUMN uses INTEGER NOT NULL DEFAULT 0",
    "ALTER TABLE join_tokens ADD COLUMN last_used_at REAL",
    "ALTER TABLE api_keys ADD COLUMN previous_secret_hash TEXT",
    "ALTER TABLE api_keys ADD COLUMN previous_valid_until REAL",
]

_KEY_COLUMNS = (
    "id, tenant, role, name, secret_hash, created_at, revoked, previous_secret_hash, "
    "previous_valid_until"
)
_JOIN_COLUMNS = "token_hash, region, labels, expires_at, max_uses, uses, last_used_at"


def _key(row: tuple[object, ...]) -> ApiKeyRecord:
    key_id, tenant, role, name, secret_hash, created_at, revoked, prev_hash, prev_until = row
    return ApiKeyRecord(
        id=str(key_id),
        tenant=str(tenant),
        role=cast(Role, str(role)),  # the store holds only the roles it was given
        name=str(name),
        secret_hash=str(secret_hash),
        created_at=float(created_at),  # type: ignore[arg-type]
        revoked=bool(revoked),
        previous_secret_hash=None if prev_hash is None else str(prev_hash),
        previous_valid_until=None if prev_until is None else float(prev_until),  # type: ignore[arg-type]
    )


def _join(row: tuple[object, ...]) -> JoinTokenRecord:
    token_hash, region, labels, expires_at, max_uses, uses, last_used_at = row
    return JoinTokenRecord(
        token_hash=str(token_hash),
        region=str(region),
        labels=json.loads(str(labels)),
        expires_at=float(expires_at),  # type: ignore[arg-type]
        max_uses=int(max_uses),  # type: ignore[call-overload]
        uses=int(uses),  # type: ignore[call-overload]
        last_used_at=None if last_used_at is None else float(last_used_at),  # type: ignore[arg-type]
    )


def _purge(conn: sqlite3.Connection, table: str, key: str, before: float) -> None:
    """Delete up to ``PURGE_BATCH`` rows of ``table`` that expired before ``before``."""
    conn.execute(
        f"DELETE FROM {table} WHERE {key} IN (SELECT {key} FROM {table} "  # noqa: S608 - constants
        "WHERE expires_at < ? ORDER BY expires_at LIMIT ?)",
        (before, PURGE_BATCH),
    )


class SqliteAuthStore:
    """``AuthStore`` on SQLite.

    Conditions, each checked and applied in one transaction or one conditional statement:

    - ``save_api_key`` / ``save_refresh_token`` / ``save_join_token``: insert when the id
      (token hash) is new; ``Conflict`` when it exists.
    - ``revoke_api_key``: sets ``revoked`` on an existing key (again: still True); False when
      there is no such key.
    - ``mark_refresh_used``: ``used`` false -> true; False when the token is missing or was
      used already (a reuse): of two presenters of one token exactly one gets True.
    - ``revoke_family``: unconditional; stores (replaces) the family's ``expires_at``.
      ``family_revoked`` is True once a family has been revoked.
    - ``ensure_signing_key``: stores ``candidate`` when no key exists; returns the stored key
      (the first writer wins, everyone gets the winner's key).

    ``now`` is only used to purge long-expired refresh and join tokens.
    """

    def __init__(self, db: Database, now: Callable[[], float] = clock.now) -> None:
        self._db = db
        self._now = now

    def _insert_new(self, sql: str, values: tuple[object, ...], what: str) -> None:
        with self._db.writing(what) as conn:
            if conn.execute(sql + " ON CONFLICT DO NOTHING", values).rowcount != 1:
                raise Conflict(f"{what}: already exists")
            before = self._now() - PURGE_GRACE_S
            _purge(conn, "refresh_tokens", "id", before)
            _purge(conn, "join_tokens", "token_hash", before)

    # ------------------------------------------------------------------ API keys
    def save_api_key(self, rec: ApiKeyRecord) -> None:
        self._insert_new(
            "INSERT INTO api_keys (id, tenant, role, name, secret_hash, created_at, revoked) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                rec.id,
                rec.tenant,
                rec.role,
                rec.name,
                rec.secret_hash,
                rec.created_at,
                int(rec.revoked),
            ),
            "save api key",
        )

    def find_api_key(self, key_id: str) -> ApiKeyRecord | None:
        with translate("find api key"):
            row = (
                self._db.read()
                .execute(f"SELECT {_KEY_COLUMNS} FROM api_keys WHERE id = ?", (key_id,))  # noqa: S608
                .fetchone()
            )
        return None if row is None else _key(row)

    def list_api_keys(self) -> list[ApiKeyRecord]:
        with translate("list api keys"):
            rows = (
                self._db.read()
                .execute(f"SELECT {_KEY_COLUMNS} FROM api_keys ORDER BY created_at, id")  # noqa: S608
                .fetchall()
            )
        return [_key(r) for r in rows]

    def revoke_api_key(self, key_id: str) -> bool:
        with self._db.writing("revoke api key") as conn:
            cur = conn.execute("UPDATE api_keys SET revoked = 1 WHERE id = ?", (key_id,))
            return cur.rowcount == 1

    def rotate_api_key(
        self, key_id: str, expected_hash: str, new_hash: str, previous_valid_until: float
    ) -> bool:
        with self._db.writing("rotate api key") as conn:
            cur = conn.execute(
                "UPDATE api_keys SET secret_hash = ?, previous_secret_hash = secret_hash, "
                "previous_valid_until = ? WHERE id = ? AND revoked = 0 AND secret_hash = ?",
                (new_hash, previous_valid_until, key_id, expected_hash),
            )
            return cur.rowcount == 1

    # ------------------------------------------------------------------ refresh tokens
    def save_refresh_token(self, rec: RefreshRecord) -> None:
        self._insert_new(
            "INSERT INTO refresh_tokens (id, secret_hash, family, key_id, tenant, role, used, "
            "expires_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                rec.id,
                rec.secret_hash,
                rec.family,
                rec.key_id,
                rec.tenant,
                rec.role,
                int(rec.used),
                rec.expires_at,
            ),
            "save refresh token",
        )

    def find_refresh_token(self, token_id: str) -> RefreshRecord | None:
        with translate("find refresh token"):
            row = (
                self._db.read()
                .execute(
                    "SELECT secret_hash, family, key_id, tenant, role, used, expires_at "
                    "FROM refresh_tokens WHERE id = ?",
                    (token_id,),
                )
                .fetchone()
            )
        if row is None:
            return None
        secret_hash, family, key_id, tenant, role, used, expires_at = row
        return RefreshRecord(
            id=token_id,
            secret_hash=secret_hash,
            family=family,
            key_id=key_id,
            tenant=tenant,
            role=role,
            expires_at=float(expires_at),
            used=bool(used),
        )

    def mark_refresh_used(self, token_id: str) -> bool:
        # Two presenters of one token race here: exactly one flips the flag.
        with self._db.writing("rotate refresh token") as conn:
            cur = conn.execute(
                "UPDATE refresh_tokens SET used = 1 WHERE id = ? AND used = 0", (token_id,)
            )
            return cur.rowcount == 1

    def revoke_family(self, family: str, expires_at: float) -> None:
        with self._db.writing("revoke token family") as conn:
            conn.execute(
                "INSERT INTO refresh_families (family, expires_at) VALUES (?, ?) "
                "ON CONFLICT (family) DO UPDATE SET expires_at = excluded.expires_at",
                (family, expires_at),
            )

    def family_revoked(self, family: str) -> bool:
        with translate("check token family"):
            row = (
                self._db.read()
                .execute("SELECT 1 FROM refresh_families WHERE family = ?", (family,))
                .fetchone()
            )
        return row is not None

    # ------------------------------------------------------------------ join tokens
    def save_join_token(self, rec: JoinTokenRecord) -> None:
        self._insert_new(
            "INSERT INTO join_tokens (token_hash, region, labels, expires_at, max_uses, uses) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (
                rec.token_hash,
                rec.region,
                json.dumps(rec.labels),
                rec.expires_at,
                rec.max_uses,
                rec.uses,
            ),
            "save join token",
        )

    def consume_join_token(self, token_hash: str) -> bool:
        with self._db.writing("consume join token") as conn:
            cur = conn.execute("DELETE FROM join_tokens WHERE token_hash = ?", (token_hash,))
            return cur.rowcount == 1

    def claim_join_token(self, token_hash: str, now: float) -> JoinTokenRecord | None:
        with self._db.writing("claim join token") as conn:
            cur = conn.execute(
                "UPDATE join_tokens SET uses = uses + 1, last_used_at = ? WHERE token_hash = ? "
                "AND expires_at >= ? AND (max_uses = 0 OR uses < max_uses)",
                (now, token_hash, now),
            )
            if cur.rowcount != 1:
                return None
            row = conn.execute(
                f"SELECT {_JOIN_COLUMNS} FROM join_tokens WHERE token_hash = ?",  # noqa: S608
                (token_hash,),
            ).fetchone()
        return _join(row)

    def find_join_token(self, token_hash: str) -> JoinTokenRecord | None:
        with translate("find join token"):
            row = (
                self._db.read()
                .execute(
                    f"SELECT {_JOIN_COLUMNS} FROM join_tokens WHERE token_hash = ?",  # noqa: S608
                    (token_hash,),
                )
                .fetchone()
            )
        return None if row is None else _join(row)

    def list_join_tokens(self) -> list[JoinTokenRecord]:
        with translate("list join tokens"):
            rows = (
                self._db.read()
                .execute(
                    f"SELECT {_JOIN_COLUMNS} FROM join_tokens "  # noqa: S608
                    "ORDER BY expires_at, token_hash"
                )
                .fetchall()
            )
        return [_join(r) for r in rows]

    def delete_join_token(self, token_hash: str) -> bool:
        with self._db.writing("delete join token") as conn:
            cur = conn.execute("DELETE FROM join_tokens WHERE token_hash = ?", (token_hash,))
            return cur.rowcount == 1

    # ------------------------------------------------------------------ signing key
    def ensure_signing_key(self, candidate: str) -> str:
        with self._db.writing("store signing key") as conn:
            conn.execute(
                "INSERT INTO signing_key (id, key) VALUES (1, ?) ON CONFLICT (id) DO NOTHING",
                (candidate,),
            )
            row = conn.execute("SELECT key FROM signing_key WHERE id = 1").fetchone()
        return str(row[0])

    def stored_signing_key(self) -> str | None:
        with self._db.reading("read signing key") as conn:
            row = conn.execute("SELECT key FROM signing_key WHERE id = 1").fetchone()
        return str(row[0]) if row is not None else None

    def ping(self) -> None:
        self._db.ping()
