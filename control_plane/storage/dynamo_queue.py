"""DynamoDB adapter of the ``queue`` and ``leases`` tables and the per-model depth counters.

- ``queue``  (``shard`` = ``<model>#<n>``, ``sk``): only claimable jobs; attrs job_id, version,
  region, ttl_deadline, token, tenant. A lease reads the heads of a model's shards and nothing else.
- ``leases`` (``shard`` = ``lease#<n>`` | ``ttl#<n>``, ``sk`` = ``<instant_ms>#<job_id>``):
  lease-expiry and queue-TTL markers; the sweep reads only the due ones.
  (Key formats: ``queue_keys.py``; services get them as ``keys`` and never parse them.)
- depth counters: items ``(name=<model>, sk=depth#<n>)`` in the ``models`` table, one per
  queue shard (no hot key), updated with ``ADD`` by whoever wins a job transition.

Why no TransactWriteItems here: moto (5.2.5) deep-copies every table a transaction touches
(cost grows with the table: 5 ms at 100 items, 354 ms at 20k) and restores that copy when a
transaction is cancelled, silently undoing writes made meanwhile by other requests. Each step
is a single-item conditional write instead, ordered so that a crash between two steps leaves
only stale index entries, which readers verify against the job item and clean up.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from control_plane.storage.aws import conditional_write, translate_errors
from control_plane.storage.dynamo_items import (
    get_i,
    get_n,
    get_s,
    n,
    paginate,
    s,
)
from control_plane.storage.protocols import Marker, QueueEntry, QueueKeys
from control_plane.storage.queue_keys import QUEUE_KEYS, read_entry

DEPTH_PREFIX = "depth#"


class DynamoQueueStore:
    """``QueueStore`` on the ``queue`` and ``leases`` tables (+ counters in ``models``)."""

    def __init__(self, dynamodb: Any, queue_table: str, leases_table: str, models_table: str):
        self._db = dynamodb
        self._queue = queue_table
        self._leases = leases_table
        self._models = models_table

    @property
    def keys(self) -> QueueKeys:
        """The key formats of the queue and leases tables (``queue_keys.py``)."""
        return QUEUE_KEYS

    # ------------------------------------------------------------------ queue entries
    def enqueue(self, entry: QueueEntry) -> bool:
        """Write an entry unless the same key holds another token (someone else's enqueue)."""
        item = {
            "shard": s(entry.shard),
            "sk": s(entry.sk),
            "job_id": s(entry.job_id),
            "version": s(entry.version),
            "region": s(entry.region),
            "ttl_deadline": n(entry.ttl_deadline),
            "token": s(entry.token),
            "timeout_s": n(entry.timeout_s),
            "tenant": s(entry.tenant),
        }
        done = conditional_write(
            "enqueue",
            self._db.put_item,
            TableName=self._queue,
            Item=item,
            ConditionExpression="attribute_not_exists(sk) OR #t = :t",
            ExpressionAttributeNames={"#t": "token"},
            ExpressionAttributeValues={":t": s(entry.token)},
        )
        return done is not None

    def enqueue_many(self, entries: list[QueueEntry]) -> None:
        """Write fresh entries (new random keys) in batches of 25."""
        items = [
            {
                "shard": s(e.shard),
                "sk": s(e.sk),
                "job_id": s(e.job_id),
                "version": s(e.version),
                "region": s(e.region),
                "ttl_deadline": n(e.ttl_deadline),
                "token": s(e.token),
                "timeout_s": n(e.timeout_s),
                "tenant": s(e.tenant),
            }
            for e in entries
        ]
        self._batch_put(self._queue, items, "enqueue batch")

    def head(self, shard: str, limit: int, after_sk: str | None = None) -> list[QueueEntry]:
        """The first ``limit`` entries of a shard (after ``after_sk``) in key order."""
        kwargs: dict[str, Any] = {
            "TableName": self._queue,
            "KeyConditionExpression": "shard = :s",
            "ExpressionAttributeValues": {":s": s(shard)},
            "ConsistentRead": True,
            "Limit": limit,
        }
        if after_sk is not None:
            kwargs["ExclusiveStartKey"] = {"shard": s(shard), "sk": s(after_sk)}
        with translate_errors("read queue"):
            page = self._db.query(**kwargs)
        return [
            read_entry(
                shard,
                str(get_s(it, "sk")),
                str(get_s(it, "job_id")),
                get_s(it, "version") or "",
                get_s(it, "region") or "",
                float(get_n(it, "ttl_deadline") or 0.0),
                get_s(it, "token") or "",
                get_i(it, "timeout_s"),
                get_s(it, "tenant") or "",
            )
            for it in page.get("Items", [])
        ]

    def remove_entry(self, shard: str, sk: str, token: str) -> None:
        """Delete an entry if it still carries ``token`` (never someone else's newer entry)."""
        conditional_write(  # None: a newer entry holds the key, and stays
            "remove queue entry",
            self._db.delete_item,
            TableName=self._queue,
            Key={"shard": s(shard), "sk": s(sk)},
            ConditionExpression="#t = :t",
            ExpressionAttributeNames={"#t": "token"},
            ExpressionAttributeValues={":t": s(token)},
        )

    # ------------------------------------------------------------------ markers
    def put_marker(self, marker: Marker) -> None:
        with translate_errors("put marker"):
            self._db.put_item(TableName=self._leases, Item=self._marker_item(marker))

    def put_markers(self, markers: list[Marker]) -> None:
        self._batch_put(self._leases, [self._marker_item(m) for m in markers], "put markers")

    @staticmethod
    def _marker_item(marker: Marker) -> dict[str, Any]:
        return {
            "shard": s(marker.shard),
            "sk": s(marker.sk),
            "job_id": s(marker.job_id),
            "token": s(marker.token),
        }

    def delete_marker(self, shard: str, sk: str) -> None:
        with translate_errors("delete marker"):
            self._db.delete_item(TableName=self._leases, Key={"shard": s(shard), "sk": s(sk)})

    def delete_markers(self, keys: list[tuple[str, str]]) -> None:
        """Unconditional deletes in batches of 25 (BatchWriteItem refuses repeated keys)."""
        requests = [
            {"DeleteRequest": {"Key": {"shard": s(shard), "sk": s(sk)}}}
            for shard, sk in dict.fromkeys(keys)
        ]
        self._batch_write(self._leases, requests, "delete markers")

    def due_markers(
        self, shard: str, before_sk: str, limit: int, after_sk: str | None = None
    ) -> list[Marker]:
        """Markers of ``shard`` whose sk sorts before ``before_sk`` (oldest first)."""
        kwargs: dict[str, Any] = {
            "TableName": self._leases,
            "KeyConditionExpression": "shard = :s AND sk < :b",
            "ExpressionAttributeValues": {":s": s(shard), ":b": s(before_sk)},
            "ConsistentRead": True,
            "Limit": limit,
        }
        if after_sk is not None:
            kwargs["ExclusiveStartKey"] = {"shard": s(shard), "sk": s(after_sk)}
        with translate_errors("read markers"):
            page = self._db.query(**kwargs)
        return [
            Marker(
                shard=shard,
                sk=str(get_s(it, "sk")),
                job_id=str(get_s(it, "job_id")),
                token=get_s(it, "token") or "",
            )
            for it in page.get("Items", [])
        ]

    # ------------------------------------------------------------------ depth counters
    def add_depth(self, model: str, shard: int, delta: int) -> None:
        """Atomically add ``delta`` to the counter of one queue shard of ``model``."""
        if delta == 0:
            return
        with translate_errors("count queue depth"):
            self._db.update_item(
                TableName=self._models,
                Key={"name": s(model), "sk": s(f"{DEPTH_PREFIX}{shard}")},
                UpdateExpression="ADD #d :d",
                ExpressionAttributeNames={"#d": "depth"},
                ExpressionAttributeValues={":d": n(delta)},
            )

    def depth(self, model: str) -> int:
        """Queued jobs of ``model``: the sum of its shard counters (one small Query)."""
        with translate_errors("read queue depth"):
            items = paginate(
                self._db,
                "query",
                TableName=self._models,
                KeyConditionExpression="#n = :n AND begins_with(sk, :p)",
                ExpressionAttributeNames={"#n": "name"},
                ExpressionAttributeValues={":n": s(model), ":p": s(DEPTH_PREFIX)},
                ConsistentRead=True,
            )
            return max(0, sum(get_i(it, "depth") for it in items))

    def all_depths(self) -> dict[str, int]:
        """model -> queued jobs, for every model with a counter (a Scan of the small table)."""
        totals: dict[str, int] = defaultdict(int)
        with translate_errors("read queue depths"):
            for it in paginate(
                self._db,
                "scan",
                TableName=self._models,
                FilterExpression="begins_with(sk, :p)",
                ExpressionAttributeValues={":p": s(DEPTH_PREFIX)},
            ):
                totals[str(get_s(it, "name"))] += get_i(it, "depth")
        return {k: max(0, v) for k, v in sorted(totals.items())}

    # ------------------------------------------------------------------ misc
    def _batch_put(self, table: str, items: list[dict[str, Any]], what: str) -> None:
        self._batch_write(table, [{"PutRequest": {"Item": it}} for it in items], what)

    def _batch_write(self, table: str, requests: list[dict[str, Any]], what: str) -> None:
        with translate_errors(what):
            for i in range(0, len(requests), 25):
                request: dict[str, Any] = {table: requests[i : i + 25]}
                while request:
                    resp = self._db.batch_write_item(RequestItems=request)
                    request = resp.get("UnprocessedItems") or {}

    def ping(self) -> None:
        """Raises Unavailable when the queue tables cannot be reached."""
        with translate_errors("ping queue"):
            self._db.get_item(TableName=self._queue, Key={"shard": s("ping"), "sk": s("ping")})
            self._db.get_item(TableName=self._leases, Key={"shard": s("ping"), "sk": s("ping")})
