"""SQLite adapter of the job items (table ``jobs``), with the DynamoDB adapter's semantics.

Every transition is one ``UPDATE jobs … WHERE id = ? AND <condition> RETURNING …`` in one
write transaction, conditioned on the status it leaves and on the token that proves the
caller's right to leave it (the same machine as ``dynamo_jobs.py``):

    QUEUED  --claim_job     (queue_token)-->  RUNNING   new lease_token (fencing token)
    QUEUED  --finish_queued (queue_token)-->  CANCELLED | TIMED_OUT
    RUNNING --extend_lease  (lease_token)-->  RUNNING   later expiry
    RUNNING --requeue_running (lease_token)-> QUEUED    new queue_token
    RUNNING --finish_running  (lease_token)-> SUCCEEDED | FAILED | CANCELLED

No row updated means another actor won the race: the adapter answers ``None``/``False``.

Units of work: ``atomic()`` opens one write transaction on this thread's connection, and every
write of the job, queue and idempotency adapters made inside it joins that transaction
(:func:`write`) instead of opening its own, so a batch (submit, claims, completes) is one
``BEGIN IMMEDIATE … COMMIT``: one WAL commit for the whole batch, and nothing of it when it
fails midway.

Layout: scalar fields are typed columns (the ones conditioned on or filtered by, and the ones a
transition sets, so a transition is a plain ``SET``); ``request``, ``outputs`` and ``error`` are
JSON text. ``created_key`` = ``<created_ms:013d>#<id>`` orders listings newest first; the
indexes on it keep a listing's cost proportional to the page, not to the table.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import json
import threading
from collections import OrderedDict
from typing import Any

from control_plane.errors import InvalidRequest
from control_plane.storage.protocols import JobClaim, JobFinish, JobRecord
from control_plane.storage.sqlite.db import Database

DDL: list[str] = [
    """CREATE TABLE IF NOT EXISTS jobs (
        id TEXT PRIMARY KEY,
        tenant TEXT NOT NULL,
        model TEXT NOT NULL,
        model_version TEXT,
        pinned INTEGER NOT NULL,
        status TEXT NOT NULL,
        priority INTEGER NOT NULL,
        created_at REAL NOT NULL,
        created_key TEXT NOT NULL,
        timeout_s INTEGER NOT NULL,
        ttl_s INTEGER NOT NULL,
        max_attempts INTEGER NOT NULL,
        region TEXT,
        request TEXT NOT NULL,
        attempts INTEGER NOT NULL,
        started_at REAL,
        finished_at REAL,
        runner_id TEXT,
        lease_token TEXT,
        lease_expires_at REAL,
        lease_shard TEXT,
        lease_sk TEXT,
        queue_shard TEXT,
        queue_sk TEXT,
        queue_token TEXT,
        outputs TEXT,
        outputs_ref TEXT,
        error TEXT,
        run_ms INTEGER
    )""",
    "CREATE INDEX IF NOT EXISTS jobs_by_created ON jobs (created_key)",
    "CREATE INDEX IF NOT EXISTS jobs_by_status ON jobs (status, created_key)",
    "CREATE INDEX IF NOT EXISTS jobs_by_tenant ON jobs (tenant, created_key)",
    "CREATE INDEX IF NOT EXISTS jobs_by_tenant_status ON jobs (tenant, status, created_key)",
    "CREATE INDEX IF NOT EXISTS jobs_by_tenant_model ON jobs (tenant, model, created_key)",
]

# Migration 4: how many times a running attempt was finished (the soak's commit record).
DDL_4: list[str] = ["ALTER TABLE jobs ADD COLUMN commits INTEGER NOT NULL DEFAULT 0"]
# Schema version 5 (``schema.MIGRATIONS``): how the run went (cold start, load and runner
# times), JSON, written with the result.
DDL_RUN_INFO: list[str] = ["ALTER TABLE jobs ADD COLUMN run_info TEXT"]

_COLUMNS = (
    "id, tenant, model, model_version, pinned, status, priority, created_at, timeout_s, ttl_s,"
    " max_attempts, region, request, attempts, started_at, finished_at, runner_id, lease_token,"
    " lease_expires_at, lease_shard, lease_sk, queue_shard, queue_sk, queue_token, outputs,"
    " outputs_ref, error, run_ms, commits, run_info"
)

# A new job stores what DynamoJobRecordStore.to_item stores: the run fields start empty.
_NEW_COLUMNS = (
    "id, tenant, created_key, model, model_version, pinned, status, priority, created_at,"
    " timeout_s, ttl_s, max_attempts, region, request, attempts, queue_shard, queue_sk,"
    " queue_token"
)
_NEW_VALUES = "?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?"
_RETURNING = f" RETURNING {_COLUMNS}"
_INSERT = (
    f"INSERT INTO jobs ({_NEW_COLUMNS}) VALUES ({_NEW_VALUES})"  # noqa: S608 - constant
    " ON CONFLICT (id) DO NOTHING"
)
_PUT = f"INSERT OR REPLACE INTO jobs ({_NEW_COLUMNS}) VALUES ({_NEW_VALUES})"  # noqa: S608
_GET = f"SELECT {_COLUMNS} FROM jobs WHERE id = ?"  # noqa: S608 - constant
_STATUSES = "SELECT id, status FROM jobs WHERE id IN (SELECT value FROM json_each(?))"
_GET_MANY = f"SELECT {_COLUMNS} FROM jobs WHERE id IN (SELECT value FROM json_each(?))"  # noqa: S608

_CLAIM_UPDATE = (
    "UPDATE jobs SET status = 'RUNNING', lease_token = ?, runner_id = ?, model_version = ?,"
    " started_at = ?, lease_expires_at = ?, lease_shard = ?, lease_sk = ?,"
    " queue_token = NULL, queue_shard = NULL, queue_sk = NULL, attempts = attempts + 1"
    " WHERE id = ? AND status = 'QUEUED' AND queue_token = ?"
)
_CLAIM = _CLAIM_UPDATE + _RETURNING
_EXTEND_UPDATE = (
    "UPDATE jobs SET lease_expires_at = ?, lease_shard = ?, lease_sk = ?"
    " WHERE id = ? AND status = 'RUNNING' AND lease_token = ? AND runner_id = ?"
)
_EXTEND = _EXTEND_UPDATE + _RETURNING
_FINISH_UPDATE = (
    "UPDATE jobs SET status = ?, finished_at = ?, outputs = COALESCE(?, outputs),"
    " outputs_ref = COALESCE(?, outputs_ref), error = COALESCE(?, error),"
    " run_ms = COALESCE(?, run_ms), run_info = COALESCE(?, run_info),"
    " lease_shard = NULL, lease_sk = NULL, commits = commits + 1"
    " WHERE id = ? AND status = 'RUNNING' AND lease_token = ?"
)
_FINISH = _FINISH_UPDATE + _RETURNING
_FINISH_EXPIRED = _FINISH_UPDATE + " AND lease_expires_at <= ?" + _RETURNING
_REQUEUE = (
    "UPDATE jobs SET status = 'QUEUED', queue_shard = ?, queue_sk = ?, queue_token = ?,"
    " lease_token = NULL, lease_shard = NULL, lease_sk = NULL, lease_expires_at = NULL,"
    " runner_id = NULL"
    " WHERE id = ? AND status = 'RUNNING' AND lease_token = ? AND lease_expires_at <= ?"
)
_FINISH_QUEUED_UPDATE = (
    "UPDATE jobs SET status = ?, finished_at = ?, error = COALESCE(?, error),"
    " queue_token = NULL, queue_shard = NULL, queue_sk = NULL"
    " WHERE id = ? AND status = 'QUEUED' AND queue_token = ?"
)
_FINISH_QUEUED = _FINISH_QUEUED_UPDATE + _RETURNING


# Batch transitions: one ``UPDATE … FROM (VALUES …)`` per chunk, each row carrying its own
# condition (queue or lease token); RETURNING names the rows that won. Ids in one statement
# are distinct (a job named twice goes to a later statement, so it sees the earlier write).
BATCH_ROWS = 200  # rows per statement (<= 8 parameters a row: far under SQLite's 32,766)


_CLAIM_MANY_SET = (
    "UPDATE jobs SET status = 'RUNNING', lease_token = c.column3, runner_id = ?,"
    " model_version = c.column4, started_at = ?, lease_expires_at = c.column5,"
    " lease_shard = c.column6, lease_sk = c.column7,"
    " queue_token = NULL, queue_shard = NULL, queue_sk = NULL, attempts = attempts + 1"
)
_CLAIM_MANY_WHERE = (
    " WHERE jobs.id = c.column1 AND jobs.status = 'QUEUED' AND jobs.queue_token = c.column2"
)
_FINISH_MANY_SET = (
    "UPDATE jobs SET status = c.column3, finished_at = ?,"
    " outputs = COALESCE(c.column4, outputs), outputs_ref = COALESCE(c.column5, outputs_ref),"
    " error = COALESCE(c.column6, error), run_ms = COALESCE(c.column7, run_ms),"
    " run_info = COALESCE(c.column8, run_info),"
    " lease_shard = NULL, lease_sk = NULL, commits = commits + 1"
)
_FINISH_MANY_WHERE = (
    " WHERE jobs.id = c.column1 AND jobs.status = 'RUNNING' AND jobs.lease_token = c.column2"
)


@functools.lru_cache(maxsize=256)
def _claim_many_sql(rows: int) -> str:
    values = ", ".join(["(?, ?, ?, ?, ?, ?, ?)"] * rows)
    return f"{_CLAIM_MANY_SET} FROM (VALUES {values}) AS c{_CLAIM_MANY_WHERE}{_RETURNING}"


@functools.lru_cache(maxsize=256)
def _finish_many_sql(rows: int) -> str:
    values = ", ".join(["(?, ?, ?, ?, ?, ?, ?, ?)"] * rows)
    return f"{_FINISH_MANY_SET} FROM (VALUES {values}) AS c{_FINISH_MANY_WHERE}{_RETURNING}"


def _rounds(ids: list[str]) -> list[list[int]]:
    """Positions of ``ids`` split into statements: at most ``BATCH_ROWS`` each, no id twice in
    one, and a repeated id's later occurrence in a later statement than its earlier one."""
    if len(ids) == 1:
        return [[0]]
    if len(ids) <= BATCH_ROWS and len(set(ids)) == len(ids):
        return [list(range(len(ids)))]  # (the common case: one statement)
    rounds: list[list[int]] = []
    seen: list[set[str]] = []
    for i, job_id in enumerate(ids):
        # the first statement after the last one holding this id, with room
        start = 0
        for r in range(len(rounds) - 1, -1, -1):
            if job_id in seen[r]:
                start = r + 1
                break
        r = start
        while r < len(rounds) and len(rounds[r]) >= BATCH_ROWS:
            r += 1
        if r == len(rounds):
            rounds.append([])
            seen.append(set())
        rounds[r].append(i)
        seen[r].add(job_id)
    return rounds


# ``json.dumps(x, separators=(",", ":"))`` without building an encoder on each call (several
# per job).
_compact = json.JSONEncoder(separators=(",", ":")).encode
_raw_decode = json.JSONDecoder().raw_decode


def _loads(text: str) -> Any:
    """``json.loads(text)`` of a stored JSON text (written by ``_compact``: no whitespace
    around it, so one scan decodes it; anything else goes through ``json.loads``)."""
    try:
        value, end = _raw_decode(text)
    except ValueError:
        return json.loads(text)  # (raises the same error as before)
    return value if end == len(text) else json.loads(text)


ROW_JSON_BUDGET = 8 * 1024 * 1024  # request + inline outputs of one job row


def _created_key(job: JobRecord) -> str:
    return f"{int(job.created_at * 1000):013d}#{job.id}"


def _new_row(job: JobRecord) -> tuple[Any, ...]:
    queue_shard, queue_sk = job.queue_key if job.queue_key is not None else (None, None)
    return (
        job.id,
        job.tenant,
        _created_key(job),
        job.model,
        job.model_version,
        int(job.pinned),
        job.status,
        job.priority,
        job.created_at,
        job.timeout_s,
        job.ttl_s,
        job.max_attempts,
        job.region,
        _compact(job.request),
        job.attempts,
        queue_shard,
        queue_sk,
        job.queue_token,
    )


def _record(row: Any, requests: RequestCache | None = None) -> JobRecord:
    (
        id_,
        tenant,
        model,
        model_version,
        pinned,
        status,
        priority,
        created_at,
        timeout_s,
        ttl_s,
        max_attempts,
        region,
        request,
        attempts,
        started_at,
        finished_at,
        runner_id,
        lease_token,
        lease_expires_at,
        lease_shard,
        lease_sk,
        queue_shard,
        queue_sk,
        queue_token,
        outputs,
        outputs_ref,
        error,
        run_ms,
        commits,
        run_info,
    ) = row
    return JobRecord(
        id=id_,
        tenant=tenant,
        model=model,
        model_version=model_version,
        pinned=bool(pinned),
        status=status,
        priority=priority,
        created_at=created_at,
        timeout_s=timeout_s,
        ttl_s=ttl_s,
        max_attempts=max_attempts,
        region=region,
        request=_loads(request) if requests is None else requests.decode(id_, request),
        attempts=attempts,
        started_at=started_at,
        finished_at=finished_at,
        runner_id=runner_id,
        lease_token=lease_token,
        lease_expires_at=lease_expires_at,
        lease_key=None if lease_shard is None else (lease_shard, lease_sk),
        queue_key=None if queue_shard is None else (queue_shard, queue_sk),
        queue_token=queue_token,
        outputs=None if outputs is None else _loads(outputs),
        outputs_ref=outputs_ref,
        error=None if error is None else _loads(error),
        run_ms=run_ms,
        commits=commits,
        run_info=None if run_info is None else _loads(run_info),
    )


class RequestCache:
    """Decoded requests of the jobs this store claimed or finished lately, by job id.

    A job's request never changes after submit, so the claim's decoded request is handed out
    again by the commit's ``RETURNING`` (the row's text compared first, so a miss or a
    different text decodes as before), and ``max_inline_outputs`` of a record built here
    takes the stored text's length instead of encoding the request again. Bounded by
    entries and bytes of text; records share the decoded object (nothing mutates a stored
    request). Thread-safe."""

    def __init__(self, most: int = 4096, most_bytes: int = 8 * 1024 * 1024) -> None:
        self._most = most
        self._most_bytes = most_bytes
        self._bytes = 0
        self._lock = threading.Lock()
        self._items: OrderedDict[str, tuple[str, Any]] = OrderedDict()

    def decode(self, job_id: str, text: str) -> Any:
        with self._lock:
            hit = self._items.get(job_id)
        if hit is not None and hit[0] == text:
            return hit[1]
        value = _loads(text)
        if len(text) <= self._most_bytes // 64:
            with self._lock:
                old = self._items.pop(job_id, None)
                if old is not None:
                    self._bytes -= len(old[0])
                self._items[job_id] = (text, value)
                self._bytes += len(text)
                while len(self._items) > self._most or self._bytes > self._most_bytes:
                    _, (gone, _) = self._items.popitem(last=False)
                    self._bytes -= len(gone)
        return value

    def text_length(self, job_id: str, value: Any) -> int | None:
        """Length of the stored JSON of ``value`` when it is the one decoded here."""
        with self._lock:
            hit = self._items.get(job_id)
        return len(hit[0]) if hit is not None and hit[1] is value else None


def _encode_cursor(tenant: str | None, created_key: str) -> str:
    raw = json.dumps({"t": tenant, "k": created_key}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str, tenant: str | None) -> str:
    """The ``created_key`` a page starts after; InvalidRequest when the cursor is not one of
    ours or belongs to another tenant's listing."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        doc = json.loads(raw)
        if not isinstance(doc, dict) or not isinstance(doc.get("k"), str):
            raise ValueError("not a job cursor")
        if doc.get("t") != tenant:  # None: every tenant's listing, a listing of its own
            raise ValueError("a cursor of another listing")
    except ValueError as exc:
        raise InvalidRequest("cursor is not valid", field="cursor") from exc
    return str(doc["k"])


@functools.lru_cache(maxsize=32)
def _list_sql(tenant: bool, status: bool, model: bool, after: bool) -> str:
    conds = [
        c
        for c, on in (
            ("tenant = ?", tenant),
            ("status = ?", status),
            ("model = ?", model),
            ("created_key < ?", after),
        )
        if on
    ]
    where = f" WHERE {' AND '.join(conds)}" if conds else ""
    select = f"SELECT {_COLUMNS}, created_key FROM jobs{where}"  # noqa: S608 - constants
    return select + " ORDER BY created_key DESC LIMIT ?"


class SqliteJobRecordStore:
    """``JobRecordStore`` on the ``jobs`` table of the embedded store.

    - ``create_job``: insert unless the id exists (False: an idempotent replay).
    - ``create_jobs``: unconditional puts of jobs with fresh random ids, one transaction.
    - ``get_jobs``: the existing ones among any number of ids, one statement.
    - ``atomic``: one write transaction for every write made on this thread inside the block.
    - ``claim_job``: QUEUED -> RUNNING iff status is QUEUED and ``queue_token`` matches; sets
      the lease (token, runner, expiry, marker key), version, ``started_at``, attempts + 1,
      clears the queue token and key.
    - ``extend_lease``: iff RUNNING with ``lease_token`` held by ``runner_id``: new expiry and
      lease marker key.
    - ``finish_running``: RUNNING -> terminal iff RUNNING with ``lease_token`` (and, with
      ``expired_before``, iff ``lease_expires_at <= expired_before``); sets ``finished_at``
      and the given result fields, clears the lease marker key (token and runner are kept).
    - ``requeue_running``: RUNNING -> QUEUED iff RUNNING with ``lease_token`` and
      ``lease_expires_at <= expired_before``; new queue key and token, lease fields cleared.
    - ``finish_queued``: QUEUED -> terminal iff QUEUED with ``queue_token``; clears the queue
      token and key.
    - ``max_inline_outputs``: ``ROW_JSON_BUDGET`` (8 MiB) less the request's JSON.

    A lost condition returns ``None`` (``False`` for ``requeue_running``); a won one returns
    the record as committed.
    """

    def __init__(self, db: Database) -> None:
        self._db = db
        self._requests = RequestCache()

    def create_job(self, job: JobRecord) -> bool:
        """Store a new job; False when the id exists already (an idempotent replay)."""
        row = _new_row(job)
        with self._db.writing("create job") as conn:
            return conn.execute(_INSERT, row).rowcount == 1

    def create_jobs(self, jobs: list[JobRecord]) -> None:
        """Store new jobs with fresh random ids (a batch submit), in one transaction."""
        rows = [_new_row(x) for x in jobs]
        with self._db.writing("create jobs") as conn:
            conn.executemany(_PUT, rows)

    def get_job(self, job_id: str) -> JobRecord | None:
        with self._db.reading("get job") as conn:
            row = conn.execute(_GET, (job_id,)).fetchone()
            return None if row is None else _record(row)

    def get_jobs(self, job_ids: list[str]) -> dict[str, JobRecord]:
        """id -> record of the jobs that exist among ``job_ids``."""
        if not job_ids:
            return {}
        ids = json.dumps(list(dict.fromkeys(job_ids)))
        with self._db.reading("get jobs") as conn:
            rows = conn.execute(_GET_MANY, (ids,)).fetchall()
        return {row[0]: _record(row) for row in rows}

    def atomic(self) -> contextlib.AbstractContextManager[None]:
        """One write transaction for the writes of this thread inside the block (nests)."""
        return self._db.atomic_as("write a batch")

    def job_statuses(self, job_ids: list[str]) -> dict[str, str]:
        """id -> status of the jobs that exist."""
        if not job_ids:
            return {}
        ids = json.dumps(list(dict.fromkeys(job_ids)))
        with self._db.reading("get job statuses") as conn:
            return dict(conn.execute(_STATUSES, (ids,)).fetchall())

    def list_jobs(
        self,
        tenant: str | None,
        status: str | None,
        model: str | None,
        limit: int,
        cursor: str | None,
    ) -> tuple[list[JobRecord], str | None]:
        """A tenant's jobs (every tenant's when ``tenant`` is None) newest first, filtered by
        status and model; ``cursor``: opaque, from the previous page (None: no more pages)."""
        limit = max(1, limit)
        after = _decode_cursor(cursor, tenant) if cursor else None
        params: list[Any] = [
            v for v in (tenant, status or None, model or None, after) if v is not None
        ]
        params.append(limit + 1)
        sql = _list_sql(tenant is not None, bool(status), bool(model), after is not None)
        with self._db.reading("list jobs") as conn:
            rows = conn.execute(sql, params).fetchall()
            page = [_record(r[:-1]) for r in rows[:limit]]
        next_cursor = _encode_cursor(tenant, rows[limit - 1][-1]) if len(rows) > limit else None
        return page, next_cursor

    def max_inline_outputs(self, job: JobRecord) -> int:
        """A row holds far more than a DynamoDB item: ``ROW_JSON_BUDGET`` for both JSONs."""
        size = self._requests.text_length(job.id, job.request)
        if size is None:
            size = len(_compact(job.request))
        return ROW_JSON_BUDGET - size

    # ------------------------------------------------------------------ transitions
    def _transition(self, what: str, sql: str, params: tuple[Any, ...]) -> JobRecord | None:
        with self._db.writing(what) as conn:
            rows = conn.execute(sql, params).fetchall()
            return _record(rows[0], self._requests) if rows else None

    def claim_job(
        self,
        job_id: str,
        queue_token: str,
        *,
        lease_token: str,
        runner_id: str,
        version: str,
        now: float,
        lease_expires_at: float,
        lease_key: tuple[str, str],
    ) -> JobRecord | None:
        """QUEUED -> RUNNING if the job is still queued under ``queue_token``."""
        params = (lease_token, runner_id, version, now, lease_expires_at, *lease_key)
        return self._transition("claim job", _CLAIM, (*params, job_id, queue_token))

    def _batch(
        self,
        what: str,
        ids: list[str],
        sql_for: Any,
        head: tuple[Any, ...],
        rows: list[tuple[Any, ...]],
    ) -> list[JobRecord | None]:
        out: list[JobRecord | None] = [None] * len(ids)
        with self._db.writing(what) as conn:
            for positions in _rounds(ids):
                params: list[Any] = list(head)
                for i in positions:
                    params.extend(rows[i])
                won = {r[0]: r for r in conn.execute(sql_for(len(positions)), params)}
                for i in positions:
                    row = won.get(ids[i])
                    if row is not None:
                        out[i] = _record(row, self._requests)
        return out

    def claim_jobs(
        self, claims: list[JobClaim], *, runner_id: str, now: float
    ) -> list[JobRecord | None]:
        """``claim_job`` for each claim: one ``UPDATE … FROM (VALUES …)`` per chunk."""
        if not claims:
            return []
        rows = [
            (c.job_id, c.queue_token, c.lease_token, c.version, c.lease_expires_at, *c.lease_key)
            for c in claims
        ]
        ids = [c.job_id for c in claims]
        return self._batch("claim jobs", ids, _claim_many_sql, (runner_id, now), rows)

    def finish_running_jobs(
        self, finishes: list[JobFinish], *, now: float
    ) -> list[JobRecord | None]:
        """``finish_running`` for each finish: one ``UPDATE … FROM (VALUES …)`` per chunk."""
        if not finishes:
            return []
        rows = [
            (
                f.job_id,
                f.lease_token,
                f.status,
                f.outputs_json,
                f.outputs_ref,
                None if f.error is None else _compact(f.error),
                f.run_ms,
                None if f.run_info is None else _compact(f.run_info),
            )
            for f in finishes
        ]
        ids = [f.job_id for f in finishes]
        return self._batch("finish jobs", ids, _finish_many_sql, (now,), rows)

    def extend_lease(
        self,
        job_id: str,
        lease_token: str,
        runner_id: str,
        lease_expires_at: float,
        lease_key: tuple[str, str],
    ) -> JobRecord | None:
        """Move the expiry of a running lease held by ``runner_id`` with ``lease_token``."""
        params = (lease_expires_at, *lease_key, job_id, lease_token, runner_id)
        return self._transition("extend lease", _EXTEND, params)

    def finish_running(
        self,
        job_id: str,
        lease_token: str,
        status: str,
        *,
        now: float,
        outputs_json: str | None = None,
        outputs_ref: str | None = None,
        error: dict[str, Any] | None = None,
        run_ms: int | None = None,
        expired_before: float | None = None,
        run_info: dict[str, Any] | None = None,
    ) -> JobRecord | None:
        """RUNNING -> terminal, exactly once per lease token (``expired_before``: only if
        the lease expired by then, for the sweep)."""
        error_json = None if error is None else _compact(error)
        info_json = None if run_info is None else _compact(run_info)
        params = (
            status,
            now,
            outputs_json,
            outputs_ref,
            error_json,
            run_ms,
            info_json,
            job_id,
            lease_token,
        )
        if expired_before is None:
            return self._transition("finish job", _FINISH, params)
        return self._transition("finish job", _FINISH_EXPIRED, (*params, expired_before))

    def requeue_running(
        self,
        job_id: str,
        lease_token: str,
        queue_key: tuple[str, str],
        queue_token: str,
        *,
        expired_before: float,
    ) -> bool:
        """RUNNING -> QUEUED once the lease has expired (the queue entry is written first)."""
        params = (*queue_key, queue_token, job_id, lease_token, expired_before)
        with self._db.writing("requeue job") as conn:
            return conn.execute(_REQUEUE, params).rowcount == 1

    def finish_queued(
        self,
        job_id: str,
        queue_token: str,
        status: str,
        *,
        now: float,
        error: dict[str, Any] | None = None,
    ) -> JobRecord | None:
        """QUEUED -> CANCELLED | TIMED_OUT if still queued under ``queue_token``."""
        error_json = None if error is None else _compact(error)
        params = (status, now, error_json, job_id, queue_token)
        return self._transition("finish queued job", _FINISH_QUEUED, params)

    def ping(self) -> None:
        """Raises Unavailable when the table cannot be read, or no write can start (the file
        locked past the busy timeout: reads still work then, submits would not)."""
        with self._db.reading("ping jobs") as conn:
            conn.execute("SELECT 1 FROM jobs LIMIT 1").fetchall()
            with self._db.write():
                pass  # BEGIN IMMEDIATE … COMMIT: takes the write lock, writes nothing
