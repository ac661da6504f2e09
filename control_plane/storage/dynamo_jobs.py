"""DynamoDB adapter of the ``jobs`` table (PK ``id``, GSIs ``by_tenant`` and ``by_time``;
an admin's listing over every tenant: ``dynamo_job_listing.py``).

Every transition is one conditional ``UpdateItem`` on the job item, conditioned on the status
it leaves and on the token that proves the caller's right to leave it:

    QUEUED  --claim_job     (queue_token)-->  RUNNING   new lease_token (fencing token)
    QUEUED  --finish_queued (queue_token)-->  CANCELLED | TIMED_OUT
    RUNNING --extend_lease  (lease_token)-->  RUNNING   later expiry
    RUNNING --requeue_running (lease_token)-> QUEUED    new queue_token
    RUNNING --finish_running  (lease_token)-> SUCCEEDED | FAILED | CANCELLED

A failed condition means another actor won the race: the adapter answers ``None``/``False``
and the service decides (skip the candidate, StaleLease, Conflict).

No multi-item transactions (see ``dynamo_queue.py`` for why): ``atomic()`` is a no-op, each
call commits on its own, and the services order their writes so that any prefix is safe.
Batches use the batch APIs: ``create_jobs`` BatchWriteItem (25 per call), ``get_jobs`` and
``job_statuses`` BatchGetItem (100 per call, consistent reads).
"""

from __future__ import annotations

import base64
import contextlib
import json
from contextlib import AbstractContextManager
from typing import Any, cast

from gpufleet.wire import JobStatus

from control_plane.errors import InvalidRequest
from control_plane.storage.aws import conditional_write, translate_errors
from control_plane.storage.dynamo_items import (
    bool_attr,
    json_attr,
    num_attr,
    read_bool,
    read_int,
    read_json,
    read_num,
    read_str,
    str_attr,
)
from control_plane.storage.dynamo_job_listing import list_every_tenant, list_shard
from control_plane.storage.protocols import JobClaim, JobFinish, JobRecord

TENANT_INDEX = "by_tenant"
ITEM_JSON_BUDGET = 350_000  # items hold 400 KB: request + inline outputs stay below this
MAX_LIST_REQUESTS = 10  # reads per list_jobs call, however sparse its filters
FILTERED_READ = 100  # items a filtered list_jobs read evaluates at least


def _key(shard_sk: tuple[str, str] | None) -> str | None:
    return None if shard_sk is None else f"{shard_sk[0]}|{shard_sk[1]}"


def _unkey(v: str | None) -> tuple[str, str] | None:
    if not v:
        return None
    shard, _, sk = v.partition("|")
    return shard, sk


def to_item(job: JobRecord) -> dict[str, Any]:
    """The full item of a new job."""
    item: dict[str, Any] = {
        "id": str_attr(job.id),
        "tenant": str_attr(job.tenant),
        "created_key": str_attr(f"{int(job.created_at * 1000):013d}#{job.id}"),
        "list_shard": str_attr(list_shard(job.id)),
        "model": str_attr(job.model),
        "pinned": bool_attr(job.pinned),
        "status": str_attr(job.status),
        "priority": num_attr(job.priority),
        "created_at": num_attr(job.created_at),
        "timeout_s": num_attr(job.timeout_s),
        "ttl_s": num_attr(job.ttl_s),
        "max_attempts": num_attr(job.max_attempts),
        "attempts": num_attr(job.attempts),
        "request": json_attr(job.request),
    }
    optional: dict[str, Any] = {
        "model_version": job.model_version,
        "region": job.region,
        "queue_key": _key(job.queue_key),
        "queue_token": job.queue_token,
    }
    for name, value in optional.items():
        if value is not None:
            item[name] = str_attr(value)
    return item


def from_item(item: dict[str, Any]) -> JobRecord:
    """A JobRecord from a stored item."""
    return JobRecord(
        id=str(read_str(item, "id")),
        tenant=str(read_str(item, "tenant")),
        model=str(read_str(item, "model")),
        model_version=read_str(item, "model_version"),
        pinned=read_bool(item, "pinned"),
        status=cast(JobStatus, read_str(item, "status")),  # as it was written
        priority=read_int(item, "priority"),
        created_at=float(read_num(item, "created_at") or 0.0),
        timeout_s=read_int(item, "timeout_s"),
        ttl_s=read_int(item, "ttl_s"),
        max_attempts=read_int(item, "max_attempts", 1),
        region=read_str(item, "region"),
        request=read_json(item, "request") or {},
        attempts=read_int(item, "attempts"),
        started_at=read_num(item, "started_at"),
        finished_at=read_num(item, "finished_at"),
        runner_id=read_str(item, "runner_id"),
        lease_token=read_str(item, "lease_token"),
        lease_expires_at=read_num(item, "lease_expires_at"),
        lease_key=_unkey(read_str(item, "lease_key")),
        queue_key=_unkey(read_str(item, "queue_key")),
        queue_token=read_str(item, "queue_token"),
        outputs=read_json(item, "outputs"),
        outputs_ref=read_str(item, "outputs_ref"),
        error=read_json(item, "error"),
        run_ms=read_int(item, "run_ms") if "run_ms" in item else None,
        commits=read_int(item, "commits"),
        run_info=read_json(item, "run_info"),
    )


def encode_cursor(key: dict[str, Any] | None) -> str | None:
    """An opaque cursor from a LastEvaluatedKey."""
    if not key:
        return None
    raw = json.dumps(key, separators=(",", ":"), sort_keys=True).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str | None) -> dict[str, Any] | None:
    """The LastEvaluatedKey inside a cursor; InvalidRequest when it is not one of ours."""
    if not cursor:
        return None
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        key = json.loads(raw)
        if not isinstance(key, dict) or "id" not in key:
            raise ValueError("not a job cursor")
        for v in key.values():
            if not isinstance(v, dict) or not isinstance(v.get("S"), str):
                raise ValueError("not a job cursor")
    except ValueError as exc:
        raise InvalidRequest("cursor is not valid", field="cursor") from exc
    return key


class DynamoJobRecordStore:
    """``JobRecordStore`` (the job records) on the ``jobs`` table."""

    def __init__(self, dynamodb: Any, table: str) -> None:
        self._db = dynamodb
        self._table = table

    def create_job(self, job: JobRecord) -> bool:
        """Store a new job; False when the id exists already (an idempotent replay)."""
        done = conditional_write(
            "create job",
            self._db.put_item,
            TableName=self._table,
            Item=to_item(job),
            ConditionExpression="attribute_not_exists(id)",
        )
        return done is not None

    def create_jobs(self, jobs: list[JobRecord]) -> None:
        """Store new jobs with fresh random ids in batches of 25 (a batch submit)."""
        with translate_errors("create jobs"):
            for i in range(0, len(jobs), 25):
                request: dict[str, Any] = {
                    self._table: [{"PutRequest": {"Item": to_item(x)}} for x in jobs[i : i + 25]]
                }
                while request:
                    resp = self._db.batch_write_item(RequestItems=request)
                    request = resp.get("UnprocessedItems") or {}

    def get_job(self, job_id: str) -> JobRecord | None:
        with translate_errors("get job"):
            item = self._db.get_item(
                TableName=self._table, Key={"id": str_attr(job_id)}, ConsistentRead=True
            ).get("Item")
        return from_item(item) if item else None

    def get_jobs(self, job_ids: list[str]) -> dict[str, JobRecord]:
        """id -> record of the jobs that exist (consistent reads, 100 ids per request)."""
        return {
            str(read_str(it, "id")): from_item(it) for it in self._batch_get(job_ids, "get jobs")
        }

    def _batch_get(self, job_ids: list[str], what: str, **projection: Any) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        unique = list(dict.fromkeys(job_ids))
        with translate_errors(what):
            for i in range(0, len(unique), 100):
                keys: list[dict[str, Any]] = [{"id": str_attr(x)} for x in unique[i : i + 100]]
                request: dict[str, Any] = {
                    self._table: {"Keys": keys, "ConsistentRead": True, **projection}
                }
                while request:
                    resp = self._db.batch_get_item(RequestItems=request)
                    items.extend(resp.get("Responses", {}).get(self._table, []))
                    request = resp.get("UnprocessedKeys") or {}
        return items

    def atomic(self) -> AbstractContextManager[None]:
        """No multi-item transactions here: each call inside commits on its own, in order."""
        return contextlib.nullcontext()

    def job_statuses(self, job_ids: list[str]) -> dict[str, str]:
        """id -> status of the jobs that exist (consistent reads, 100 ids per request)."""
        items = self._batch_get(
            job_ids,
            "get job statuses",
            ProjectionExpression="id, #s",
            ExpressionAttributeNames={"#s": "status"},
        )
        return {str(read_str(it, "id")): str(read_str(it, "status")) for it in items}

    def list_jobs(
        self,
        tenant: str | None,
        status: str | None,
        model: str | None,
        limit: int,
        cursor: str | None,
    ) -> tuple[list[JobRecord], str | None]:
        """A tenant's jobs newest first (every tenant's when ``tenant`` is None: a Scan,
        newest first within a page). ``cursor``: opaque, from the previous page. A page is
        filled with up to ``MAX_LIST_REQUESTS`` requests."""
        limit = max(1, limit)
        if tenant is None:  # every tenant's, newest first: the sharded by_time index
            return list_every_tenant(
                self._db, self._table, self.get_jobs, status, model, limit, cursor
            )
        start = decode_cursor(cursor)
        filters, values, names = [], {}, {}
        if status:
            filters.append("#st = :st")
            values[":st"] = str_attr(status)
            names["#st"] = "status"
        if model:
            filters.append("#m = :m")
            values[":m"] = str_attr(model)
            names["#m"] = "model"
        kwargs: dict[str, Any] = {"TableName": self._table}
        if tenant is not None:
            kwargs.update(
                IndexName=TENANT_INDEX,
                KeyConditionExpression="tenant = :t",
                ScanIndexForward=False,
            )
            values[":t"] = str_attr(tenant)
        if filters:
            kwargs["FilterExpression"] = " AND ".join(filters)
            kwargs["ExpressionAttributeNames"] = names
        if values:
            kwargs["ExpressionAttributeValues"] = values
        if start and tenant is None:
            start = {"id": start["id"]}
        elif start and (
            start.get("tenant") != str_attr(tenant or "") or "created_key" not in start
        ):
            raise InvalidRequest("cursor is not valid", field="cursor")
        op = self._db.query if tenant is not None else self._db.scan
        key_names = ("id",) if tenant is None else ("id", "tenant", "created_key")
        items: list[dict[str, Any]] = []
        # A request reads at most ``Limit`` items and 1 MB before the filter drops some: read
        # on until the page is full. Filtered reads take ``FILTERED_READ`` items at a time;
        # when a read brings more than the page needs, the cursor is the last kept item's key.
        for _ in range(MAX_LIST_REQUESTS):
            want = limit - len(items)
            if start:
                kwargs["ExclusiveStartKey"] = start
            with translate_errors("list jobs"):
                page = op(**kwargs, Limit=max(want, FILTERED_READ) if filters else want)
            found = page.get("Items", [])
            start = page.get("LastEvaluatedKey")
            if len(found) > want:
                found = found[:want]
                start = {k: found[-1][k] for k in key_names}
            items.extend(found)
            if not start or len(items) >= limit:
                break
        records = [from_item(it) for it in items]
        if tenant is None:
            records.sort(key=lambda r: r.created_at, reverse=True)
        return records, encode_cursor(start)

    def max_inline_outputs(self, job: JobRecord) -> int:
        """What fits the item next to the request (``ITEM_JSON_BUDGET`` for both JSONs)."""
        return ITEM_JSON_BUDGET - 1 - len(json.dumps(job.request, separators=(",", ":")))

    # ------------------------------------------------------------------ transitions
    def _transition(
        self,
        job_id: str,
        what: str,
        cond: dict[str, str],
        sets: dict[str, Any],
        removes: tuple[str, ...] = (),
        adds: dict[str, int] | None = None,
        expired_before: float | None = None,
    ) -> JobRecord | None:
        names: dict[str, str] = {}
        values: dict[str, Any] = {}
        conds = ["attribute_exists(id)"]
        if expired_before is not None:
            conds.append("lease_expires_at <= :exp")
            values[":exp"] = num_attr(expired_before)
        for i, (attr, expected) in enumerate(cond.items()):
            names[f"#c{i}"] = attr
            values[f":c{i}"] = str_attr(expected)
            conds.append(f"#c{i} = :c{i}")
        parts: list[str] = []
        set_parts = []
        for i, (attr, value) in enumerate(sets.items()):
            names[f"#s{i}"] = attr
            values[f":s{i}"] = value
            set_parts.append(f"#s{i} = :s{i}")
        if set_parts:
            parts.append("SET " + ", ".join(set_parts))
        if adds:
            add_parts = []
            for i, (attr, delta) in enumerate(adds.items()):
                names[f"#a{i}"] = attr
                values[f":a{i}"] = num_attr(delta)
                add_parts.append(f"#a{i} :a{i}")
            parts.append("ADD " + ", ".join(add_parts))
        if removes:
            rm = []
            for i, attr in enumerate(removes):
                names[f"#r{i}"] = attr
                rm.append(f"#r{i}")
            parts.append("REMOVE " + ", ".join(rm))
        resp = conditional_write(
            what,
            self._db.update_item,
            TableName=self._table,
            Key={"id": str_attr(job_id)},
            UpdateExpression=" ".join(parts),
            ConditionExpression=" AND ".join(conds),
            ExpressionAttributeNames=names,
            ExpressionAttributeValues=values,
            ReturnValues="ALL_NEW",
        )
        return None if resp is None else from_item(resp["Attributes"])

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
        return self._transition(
            job_id,
            "claim job",
            {"status": "QUEUED", "queue_token": queue_token},
            {
                "status": str_attr("RUNNING"),
                "lease_token": str_attr(lease_token),
                "runner_id": str_attr(runner_id),
                "model_version": str_attr(version),
                "started_at": num_attr(now),
                "lease_expires_at": num_attr(lease_expires_at),
                "lease_key": str_attr(str(_key(lease_key))),
            },
            removes=("queue_token", "queue_key"),
            adds={"attempts": 1},
        )

    def claim_jobs(
        self, claims: list[JobClaim], *, runner_id: str, now: float
    ) -> list[JobRecord | None]:
        """``claim_job`` for each claim, in order: one conditional UpdateItem each (DynamoDB
        has no conditional batch write that lets one item lose alone)."""
        return [
            self.claim_job(
                c.job_id,
                c.queue_token,
                lease_token=c.lease_token,
                runner_id=runner_id,
                version=c.version,
                now=now,
                lease_expires_at=c.lease_expires_at,
                lease_key=c.lease_key,
            )
            for c in claims
        ]

    def finish_running_jobs(
        self, finishes: list[JobFinish], *, now: float
    ) -> list[JobRecord | None]:
        """``finish_running`` for each finish, in order: one conditional UpdateItem each."""
        return [
            self.finish_running(
                f.job_id,
                f.lease_token,
                f.status,
                now=now,
                outputs_json=f.outputs_json,
                outputs_ref=f.outputs_ref,
                error=f.error,
                run_ms=f.run_ms,
                run_info=f.run_info,
            )
            for f in finishes
        ]

    def extend_lease(
        self,
        job_id: str,
        lease_token: str,
        runner_id: str,
        lease_expires_at: float,
        lease_key: tuple[str, str],
    ) -> JobRecord | None:
        """Move the expiry of a running lease held by ``runner_id`` with ``lease_token``."""
        return self._transition(
            job_id,
            "extend lease",
            {"status": "RUNNING", "lease_token": lease_token, "runner_id": runner_id},
            {
                "lease_expires_at": num_attr(lease_expires_at),
                "lease_key": str_attr(str(_key(lease_key))),
            },
        )

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
        sets: dict[str, Any] = {"status": str_attr(status), "finished_at": num_attr(now)}
        if run_info is not None:
            sets["run_info"] = json_attr(run_info)
        if outputs_json is not None:
            sets["outputs"] = str_attr(outputs_json)
        if outputs_ref is not None:
            sets["outputs_ref"] = str_attr(outputs_ref)
        if error is not None:
            sets["error"] = json_attr(error)
        if run_ms is not None:
            sets["run_ms"] = num_attr(run_ms)
        return self._transition(
            job_id,
            "finish job",
            {"status": "RUNNING", "lease_token": lease_token},
            sets,
            removes=("lease_key",),
            adds={"commits": 1},
            expired_before=expired_before,
        )

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
        rec = self._transition(
            job_id,
            "requeue job",
            {"status": "RUNNING", "lease_token": lease_token},
            {
                "status": str_attr("QUEUED"),
                "queue_key": str_attr(str(_key(queue_key))),
                "queue_token": str_attr(queue_token),
            },
            removes=("lease_token", "lease_key", "lease_expires_at", "runner_id"),
            expired_before=expired_before,
        )
        return rec is not None

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
        sets: dict[str, Any] = {"status": str_attr(status), "finished_at": num_attr(now)}
        if error is not None:
            sets["error"] = json_attr(error)
        return self._transition(
            job_id,
            "finish queued job",
            {"status": "QUEUED", "queue_token": queue_token},
            sets,
            removes=("queue_token", "queue_key"),
        )

    def ping(self) -> None:
        """Raises Unavailable when the table cannot be reached."""
        with translate_errors("ping jobs"):
            self._db.get_item(TableName=self._table, Key={"id": str_attr("ping")})
