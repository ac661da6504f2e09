"""SQLite adapter of the signing-key store (same meaning as ``dynamo_keys.py``).

The current key is the row whose ``retired_at`` is NULL; a rotation retires it and inserts
the new one in one ``BEGIN IMMEDIATE`` transaction, so concurrent rotations serialize and the
second finds its ``replaces`` retired already.
"""

from __future__ import annotations

import json

from control_plane.storage.protocols_keys import SigningKeyRecord
from control_plane.storage.sqlite.db import Database, translate

DDL: list[str] = [
    """CREATE TABLE IF NOT EXISTS signing_keys (
        kid TEXT PRIMARY KEY,
        alg TEXT NOT NULL,
        private_pem TEXT NOT NULL,
        public_jwk TEXT NOT NULL,
        created_at REAL NOT NULL,
        retired_at REAL
    )""",
]


class SqliteSigningKeyStore:
    """``SigningKeyStore`` on SQLite."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def list_signing_keys(self) -> list[SigningKeyRecord]:
        with translate("list signing keys"):
            rows = (
                self._db.read()
                .execute(
                    "SELECT kid, alg, private_pem, public_jwk, created_at, retired_at "
                    "FROM signing_keys ORDER BY created_at, kid"
                )
                .fetchall()
            )
        return [
            SigningKeyRecord(
                kid=r[0],
                alg=r[1],
                private_pem=r[2],
                public_jwk=json.loads(r[3]),
                created_at=float(r[4]),
                retired_at=None if r[5] is None else float(r[5]),
            )
            for r in rows
        ]

    def add_signing_key(self, rec: SigningKeyRecord, replaces: str | None, at: float) -> bool:
        with self._db.writing("add signing key") as conn:
            row = conn.execute("SELECT kid FROM signing_keys WHERE retired_at IS NULL").fetchone()
            current = None if row is None else str(row[0])
            if current != replaces:
                return False
            if conn.execute("SELECT 1 FROM signing_keys WHERE kid = ?", (rec.kid,)).fetchone():
                return False
            if replaces is not None:
                conn.execute("UPDATE signing_keys SET retired_at = ? WHERE kid = ?", (at, replaces))
            conn.execute(
                "INSERT INTO signing_keys (kid, alg, private_pem, public_jwk, created_at, "
                "retired_at) VALUES (?, ?, ?, ?, ?, NULL)",
                (rec.kid, rec.alg, rec.private_pem, json.dumps(rec.public_jwk), rec.created_at),
            )
        return True

    def delete_signing_key(self, kid: str) -> bool:
        with self._db.writing("delete signing key") as conn:
            cur = conn.execute(
                "DELETE FROM signing_keys WHERE kid = ? AND retired_at IS NOT NULL", (kid,)
            )
            return cur.rowcount == 1
