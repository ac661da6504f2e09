"""SQLite adapters of webhook deliveries and tenant signing secrets; same meaning as
``dynamo_webhooks.py``.

Tables:

- ``webhook_deliveries``  (job_id, event): msg_id, tenant, url, body, state, attempts, next_at,
                          index_shard, index_sk, claim, expires_at.
- ``webhook_due``         (shard, sk) the due index: one entry per live delivery, ``sk`` =
                          ``<due_ms:013d>#<job_id>#<event>`` so a range scan finds what is due.
- ``webhook_attempts``    (job_id, event, attempt): the delivery log.
- ``webhook_secrets``     (tenant): current, previous, previous_until, version.

Timeline of one attempt (every step one transaction, conditions in brackets)::

    enqueue   insert delivery [absent]             + put due(index_sk)
    claim     [due(seen) exists]
              update delivery: sending, attempts+1, claim=T, index_sk=lease
              [index_sk = seen entry AND attempts = seen]
              + delete due(seen)                   + put due(lease)
    finish    update delivery: state, index_sk=next|NULL, claim NULL  [claim = T]
              + delete due(lease)                  + put due(next)?   + put attempt #n

Deliveries and attempts expire ``LOG_TTL_S`` after the delivery was created (DynamoDB's TTL
there); each ``enqueue`` deletes a bounded batch of expired rows, using the new delivery's
``created_at`` as the clock. Index entries left behind are dropped by the worker
(``drop_stale``), as on DynamoDB.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from control_plane.services.webhook_records import (
    AttemptRecord,
    Claim,
    Delivery,
    DueRef,
    SecretRecord,
)
from control_plane.storage.sqlite.db import Database, translate

LOG_TTL_S = 30 * 86_400
PURGE_BATCH = 64

DDL: list[str] = [
    """CREATE TABLE IF NOT EXISTS webhook_deliveries (
        job_id TEXT NOT NULL,
        event TEXT NOT NULL,
        msg_id TEXT NOT NULL,
        tenant TEXT NOT NULL,
        url TEXT NOT NULL,
        body TEXT NOT NULL,
        state TEXT NOT NULL,
        attempts INTEGER NOT NULL,
        created_at REAL NOT NULL,
        next_at REAL,
        index_shard INTEGER NOT NULL,
        index_sk TEXT,
        claim TEXT,
        expires_at INTEGER NOT NULL,
        PRIMARY KEY (job_id, event)
    )""",
    "CREATE INDEX IF NOT EXISTS webhook_deliveries_expiry ON webhook_deliveries (expires_at)",
    """CREATE TABLE IF NOT EXISTS webhook_due (
        shard INTEGER NOT NULL,
        sk TEXT NOT NULL,
        job_id TEXT NOT NULL,
        event TEXT NOT NULL,
        PRIMARY KEY (shard, sk)
    ) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS webhook_attempts (
        job_id TEXT NOT NULL,
        event TEXT NOT NULL,
        attempt INTEGER NOT NULL,
        msg_id TEXT NOT NULL,
        at REAL NOT NULL,
        duration_ms INTEGER NOT NULL,
        status_code INTEGER,
        error TEXT,
        expires_at INTEGER NOT NULL,
        PRIMARY KEY (job_id, event, attempt)
    )""",
    "CREATE INDEX IF NOT EXISTS webhook_attempts_expiry ON webhook_attempts (expires_at)",
    """CREATE TABLE IF NOT EXISTS webhook_secrets (
        tenant TEXT PRIMARY KEY,
        current TEXT NOT NULL,
        version INTEGER NOT NULL,
        created_at REAL NOT NULL,
        previous TEXT,
        previous_until REAL
    )""",
]

_DELIVERY_COLUMNS = (
    "job_id, event, msg_id, tenant, url, body, state, attempts, created_at, next_at, "
    "index_shard, index_sk, claim"
)
_ATTEMPT_COLUMNS = "job_id, event, msg_id, attempt, at, duration_ms, status_code, error"


def _ms(t: float) -> str:
    return f"{int(t * 1000):013d}"


def index_sk(due_at: float, job_id: str, event: str) -> str:
    """Key of an index entry: due time first, so a range scan finds what is due."""
    return f"{_ms(due_at)}#{job_id}#{event}"


def _delivery(row: tuple[Any, ...]) -> Delivery:
    (job_id, event, msg_id, tenant, url, body, state, attempts, created_at) = row[:9]
    next_at, shard, sk, claim = row[9:]
    return Delivery(
        job_id=job_id,
        event=event,
        msg_id=msg_id,
        tenant=tenant,
        url=url,
        body=body,
        state=state,
        attempts=int(attempts),
        created_at=float(created_at),
        next_attempt_at=None if next_at is None else float(next_at),
        index_shard=int(shard),
        index_sk=sk,
        claim=claim,
    )


def _attempt(row: tuple[Any, ...]) -> AttemptRecord:
    job_id, event, msg_id, attempt, at, duration_ms, status_code, error = row
    return AttemptRecord(
        job_id=job_id,
        event=event,
        msg_id=msg_id,
        attempt=int(attempt),
        at=float(at),
        duration_ms=int(duration_ms),
        status_code=None if status_code is None else int(status_code),
        error=error,
    )


class SqliteWebhookStore:
    """``WebhookStore`` on SQLite.

    Conditions (see the timeline above), each checked and applied in one transaction:

    - ``enqueue``: creates the delivery (``pending``, 0 attempts, due at ``due_at``) and its
      index entry when no delivery of that job and event exists; False otherwise, and then
      nothing is written.
    - ``claim``: wins only when the index entry ``ref`` still exists and the delivery still
      points at it with ``seen.attempts`` attempts; then the delivery becomes ``sending``
      with one more attempt and the claim token, and its index entry moves to the lease's
      end. None when any of that no longer holds (another worker claimed, or it finished).
    - ``finish``: commits the attempt's outcome only while the delivery still carries the
      claim's token; False when the claim was lost. It removes the lease entry, stores the
      attempt (its job, event and msg_id are the claimed delivery's; ``error`` cut to 1000
      characters) and, when ``next_at`` is given, a new index entry; without ``next_at`` the
      delivery has no index entry any more.
    - ``drop_stale``: deletes the index entry, unconditionally.

    ``due`` lists entries due before ``now`` + 1 ms, oldest first; ``deliveries`` by event,
    ``attempts`` by event then attempt number.
    """

    def __init__(self, db: Database) -> None:
        self._db = db

    def enqueue(self, delivery: Delivery, due_at: float) -> bool:
        d = delivery
        sk = index_sk(due_at, d.job_id, d.event)
        with self._db.writing("enqueue webhook") as conn:
            cur = conn.execute(
                f"INSERT INTO webhook_deliveries ({_DELIVERY_COLUMNS}, expires_at) "  # noqa: S608
                "VALUES (?, ?, ?, ?, ?, ?, 'pending', 0, ?, ?, ?, ?, NULL, ?) "
                "ON CONFLICT DO NOTHING",
                (
                    d.job_id,
                    d.event,
                    d.msg_id,
                    d.tenant,
                    d.url,
                    d.body,
                    d.created_at,
                    due_at,
                    d.index_shard,
                    sk,
                    int(d.created_at) + LOG_TTL_S,
                ),
            )
            if cur.rowcount != 1:
                return False
            conn.execute(
                "INSERT OR REPLACE INTO webhook_due (shard, sk, job_id, event) VALUES (?, ?, ?, ?)",
                (d.index_shard, sk, d.job_id, d.event),
            )
            for table, key in (
                ("webhook_deliveries", "job_id, event"),
                ("webhook_attempts", "job_id, event, attempt"),
            ):
                conn.execute(
                    f"DELETE FROM {table} WHERE ({key}) IN (SELECT {key} FROM {table} "  # noqa: S608
                    "WHERE expires_at < ? ORDER BY expires_at LIMIT ?)",
                    (int(d.created_at), PURGE_BATCH),
                )
        return True

    def due(self, shard: int, now: float, limit: int) -> list[DueRef]:
        with translate("list due webhooks"):
            rows = (
                self._db.read()
                .execute(
                    "SELECT job_id, event, sk FROM webhook_due WHERE shard = ? AND sk < ? "
                    "ORDER BY sk LIMIT ?",
                    (shard, _ms(now + 0.001), limit),
                )
                .fetchall()
            )
        return [DueRef(job_id=j, event=e, shard=shard, sk=sk) for j, e, sk in rows]

    def get(self, job_id: str, event: str) -> Delivery | None:
        with translate("read webhook delivery"):
            row = (
                self._db.read()
                .execute(
                    f"SELECT {_DELIVERY_COLUMNS} FROM webhook_deliveries "  # noqa: S608
                    "WHERE job_id = ? AND event = ?",
                    (job_id, event),
                )
                .fetchone()
            )
        return None if row is None else _delivery(row)

    def claim(self, ref: DueRef, seen: Delivery, token: str, lease_until: float) -> Claim | None:
        lease_sk = index_sk(lease_until, ref.job_id, ref.event)
        with self._db.writing("claim webhook delivery") as conn:
            entry = conn.execute(
                "SELECT 1 FROM webhook_due WHERE shard = ? AND sk = ?", (ref.shard, ref.sk)
            ).fetchone()
            if entry is None:
                return None
            cur = conn.execute(
                "UPDATE webhook_deliveries SET state = 'sending', attempts = ?, claim = ?, "
                "index_sk = ?, next_at = ? "
                "WHERE job_id = ? AND event = ? AND index_sk = ? AND attempts = ?",
                (
                    seen.attempts + 1,
                    token,
                    lease_sk,
                    lease_until,
                    ref.job_id,
                    ref.event,
                    ref.sk,
                    seen.attempts,
                ),
            )
            if cur.rowcount != 1:
                return None
            conn.execute("DELETE FROM webhook_due WHERE shard = ? AND sk = ?", (ref.shard, ref.sk))
            conn.execute(
                "INSERT OR REPLACE INTO webhook_due (shard, sk, job_id, event) VALUES (?, ?, ?, ?)",
                (ref.shard, lease_sk, ref.job_id, ref.event),
            )
        claimed = dataclasses.replace(
            seen,
            state="sending",
            attempts=seen.attempts + 1,
            claim=token,
            index_sk=lease_sk,
            next_attempt_at=lease_until,
        )
        return Claim(delivery=claimed, token=token, lease_sk=lease_sk)

    def drop_stale(self, ref: DueRef) -> None:
        with self._db.writing("drop stale webhook index entry") as conn:
            conn.execute("DELETE FROM webhook_due WHERE shard = ? AND sk = ?", (ref.shard, ref.sk))

    def finish(
        self, claim: Claim, attempt: AttemptRecord, state: str, next_at: float | None
    ) -> bool:
        d = claim.delivery
        nxt = None if next_at is None else index_sk(next_at, d.job_id, d.event)
        with self._db.writing("record webhook attempt") as conn:
            cur = conn.execute(
                "UPDATE webhook_deliveries SET state = ?, index_sk = ?, next_at = ?, claim = NULL "
                "WHERE job_id = ? AND event = ? AND claim = ?",
                (state, nxt, next_at, d.job_id, d.event, claim.token),
            )
            if cur.rowcount != 1:
                return False
            conn.execute(
                "DELETE FROM webhook_due WHERE shard = ? AND sk = ?",
                (d.index_shard, claim.lease_sk),
            )
            conn.execute(
                f"INSERT OR REPLACE INTO webhook_attempts ({_ATTEMPT_COLUMNS}, expires_at) "  # noqa: S608
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    d.job_id,
                    d.event,
                    d.msg_id,
                    attempt.attempt,
                    attempt.at,
                    attempt.duration_ms,
                    attempt.status_code,
                    None if attempt.error is None else attempt.error[:1000],
                    int(d.created_at) + LOG_TTL_S,
                ),
            )
            if nxt is not None:
                conn.execute(
                    "INSERT OR REPLACE INTO webhook_due (shard, sk, job_id, event) "
                    "VALUES (?, ?, ?, ?)",
                    (d.index_shard, nxt, d.job_id, d.event),
                )
        return True

    def deliveries(self, job_id: str) -> list[Delivery]:
        with translate("list webhook deliveries"):
            rows = (
                self._db.read()
                .execute(
                    f"SELECT {_DELIVERY_COLUMNS} FROM webhook_deliveries "  # noqa: S608
                    "WHERE job_id = ? ORDER BY event",
                    (job_id,),
                )
                .fetchall()
            )
        return [_delivery(r) for r in rows]

    def attempts(self, job_id: str) -> list[AttemptRecord]:
        with translate("list webhook attempts"):
            rows = (
                self._db.read()
                .execute(
                    f"SELECT {_ATTEMPT_COLUMNS} FROM webhook_attempts "  # noqa: S608
                    "WHERE job_id = ? ORDER BY event, attempt",
                    (job_id,),
                )
                .fetchall()
            )
        return [_attempt(r) for r in rows]

    def ping(self) -> None:
        self._db.ping()


class SqliteWebhookSecretStore:
    """``SecretStore`` on SQLite (table ``webhook_secrets``).

    - ``create``: inserts the tenant's first record; False when the tenant has one.
    - ``replace``: overwrites the record only while the stored ``version`` equals
      ``expected_version``; False when it does not (or there is no record).

    ``previous`` is kept only together with ``previous_until`` (both or neither).
    """

    def __init__(self, db: Database) -> None:
        self._db = db

    @staticmethod
    def _values(rec: SecretRecord) -> tuple[Any, ...]:
        both = rec.previous is not None and rec.previous_until is not None
        return (
            rec.current,
            rec.version,
            rec.created_at,
            rec.previous if both else None,
            rec.previous_until if both else None,
        )

    def get(self, tenant: str) -> SecretRecord | None:
        with translate("read webhook secret"):
            row = (
                self._db.read()
                .execute(
                    "SELECT current, version, created_at, previous, previous_until "
                    "FROM webhook_secrets WHERE tenant = ?",
                    (tenant,),
                )
                .fetchone()
            )
        if row is None:
            return None
        current, version, created_at, previous, previous_until = row
        return SecretRecord(
            tenant=tenant,
            current=current,
            version=int(version),
            created_at=float(created_at),
            previous=previous,
            previous_until=None if previous_until is None else float(previous_until),
        )

    def create(self, record: SecretRecord) -> bool:
        with self._db.writing("store webhook secret") as conn:
            cur = conn.execute(
                "INSERT INTO webhook_secrets (tenant, current, version, created_at, previous, "
                "previous_until) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                (record.tenant, *self._values(record)),
            )
            return cur.rowcount == 1

    def replace(self, record: SecretRecord, expected_version: int) -> bool:
        with self._db.writing("store webhook secret") as conn:
            cur = conn.execute(
                "UPDATE webhook_secrets SET current = ?, version = ?, created_at = ?, "
                "previous = ?, previous_until = ? WHERE tenant = ? AND version = ?",
                (*self._values(record), record.tenant, expected_version),
            )
            return cur.rowcount == 1
