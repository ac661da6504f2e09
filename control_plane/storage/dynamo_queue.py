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
    num_attr,
    paginate,
    read_int,
    read_num,
    read_str,
    str_attr,
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
            "shard": str_attr(entry.shard),
            "sk": str_attr(entry.sk),
            "job_id": str_attr(entry.job_id),
            "version": str_attr(entry.version),
            "region": str_attr(entry.region),
            "ttl_deadline": num_attr(entry.ttl_deadline),
            "token": str_attr(entry.token),
            "timeout_s": num_attr(entry.timeout_s),
            "tenant": str_attr(entry.tenant),
        }
        done = conditional_write(
            "enqueue",
            self._db.put_item,
            TableName=self._queue,
            Item=item,
            ConditionExpression="attribute_not_exists(sk) OR #t = :t",
            ExpressionAttributeNames={"#t": "token"},
            ExpressionAttributeValues={":t": str_attr(entry.token)},
        )
        return done is not None

    def enqueue_many(self, entries: list[QueueEntry]) -> None:
        """Write fresh entries (new random keys) in batches of 25."""
        items = [
            {
                "shard": str_attr(e.shard),
                "sk": str_attr(e.sk),
                "job_id": str_attr(e.job_id),
                "version": str_attr(e.version),
                "region": str_attr(e.region),
                "ttl_deadline": num_attr(e.ttl_deadline),
                "token": str_attr(e.token),
                "timeout_s": num_attr(e.timeout_s),
                "tenant": str_attr(e.tenant),
            }
            for e in entries
        ]
        self._batch_put(self._queue, items, "enqueue batch")

    def head(self, shard: str, limit: int, after_sk: str | None = None) -> list[QueueEntry]:
        """The first ``limit`` entries of a shard (after ``after_sk``) in key order."""
        kwargs: dict[str, Any] = {
            "TableName": self._queue,
            "KeyConditionExpression": "shard = :s",
            "ExpressionAttributeValues": {":s": str_attr(shard)},
            "ConsistentRead": True,
            "Limit": limit,
        }
        if after_sk is not None:
            kwargs["ExclusiveStartKey"] = {"shard": str_attr(shard), "sk": str_attr(after_sk)}
        with translate_errors("read queue"):
            page = self._db.query(**kwargs)
        return [
            read_entry(
                shard,
                str(read_str(it, "sk")),
                str(read_str(it, "job_id")),
                read_str(it, "version") or "",
                read_str(it, "region") or "",
                float(read_num(it, "ttl_deadline") or 0.0),
                read_str(it, "token") or "",
                read_int(it, "timeout_s"),
                read_str(it, "tenant") or "",
            )
            for it in page.get("Items", [])
        ]

    def remove_entry(self, shard: str, sk: str, token: str) -> None:
        """Delete an entry if it still carries ``token`` (never someone else's newer entry)."""
        conditional_write(  # None: a newer entry holds the key, and stays
            "remove queue entry",
            self._db.delete_item,
            TableName=self._queue,
            Key={"shard": str_attr(shard), "sk": str_attr(sk)},
            ConditionExpression="#t = :t",
            ExpressionAttributeNames={"#t": "token"},
            ExpressionAttributeValues={":t": str_attr(token)},
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
            "shard": str_attr(marker.shard),
            "sk": str_attr(marker.sk),
            "job_id": str_attr(marker.job_id),
            "token": str_attr(marker.token),
        }

    def delete_marker(self, shard: str, sk: str) -> None:
        with translate_errors("delete marker"):
            self._db.delete_item(
                TableName=self._leases, Key={"shard": str_attr(shard), "sk": str_attr(sk)}
            )

    def delete_markers(self, keys: list[tuple[str, str]]) -> None:
        """Unconditional deletes in batches of 25 (BatchWriteItem refuses repeated keys)."""
        requests = [
            {"DeleteRequest": {"Key": {"shard": str_attr(shard), "sk": str_attr(sk)}}}
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
            "ExpressionAttributeValues": {":s": str_attr(shard), ":b": str_attr(before_sk)},
            "ConsistentRead": True,
            "Limit": limit,
        }
        if after_sk is not None:
            kwargs["ExclusiveStartKey"] = {"shard": str_attr(shard), "sk": str_attr(after_sk)}
        with translate_errors("read markers"):
            page = self._db.query(**kwargs)
        return [
            Marker(
                shard=shard,
                sk=str(read_str(it, "sk")),
                job_id=str(read_str(it, "job_id")),
                token=read_str(it, "token") or "",
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
                Key={"name": str_attr(model), "sk": str_attr(f"{DEPTH_PREFIX}{shard}")},
                UpdateExpression="ADD #d :d",
                ExpressionAttributeNames={"#d": "depth"},
                ExpressionAttributeValues={":d": num_attr(delta)},
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
                ExpressionAttributeValues={":n": str_attr(model), ":p": str_attr(DEPTH_PREFIX)},
                ConsistentRead=True,
            )
            return max(0, sum(read_int(it, "depth") for it in items))

    def all_depths(self) -> dict[str, int]:
        """model -> queued jobs, for every model with a counter (a Scan of the small table)."""
        totals: dict[str, int] = defaultdict(int)
        with translate_errors("read queue depths"):
            for it in paginate(
                self._db,
                "scan",
                TableName=self._models,
                FilterExpression="begins_with(sk, :p)",
                ExpressionAttributeValues={":p": str_attr(DEPTH_PREFIX)},
            ):
                totals[str(read_str(it, "name"))] += read_int(it, "depth")
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
            self._db.get_item(
                TableName=self._queue, Key={"shard": str_attr("ping"), "sk": str_attr("ping")}
            )
            self._db.get_item(
                TableName=self._leases, Key={"shard": str_attr("ping"), "sk": str_attr("ping")}
            )
