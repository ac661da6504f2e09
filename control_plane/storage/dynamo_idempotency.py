"""DynamoDB adapter of the ``idempotency`` table (PK ``key`` = ``<tenant>#<Idempotency-Key>``).

Timeline of one key: the first submit puts the record (condition: no record, or an expired
one); a concurrent or later submit fails that condition and reads the record back, so exactly
one job id is ever bound to a live key. ``expires_at`` is also the table's TTL attribute.
"""

from __future__ import annotations

from typing import Any

from control_plane.storage.aws import translate_errors, try_conditional
from control_plane.storage.dynamo_items import (
    num_attr,
    read_int,
    read_num,
    read_str,
    str_attr,
)
from control_plane.storage.protocols import IdempotencyRecord


class DynamoIdempotencyStore:
    """``IdempotencyStore`` on DynamoDB."""

    def __init__(self, dynamodb: Any, table: str) -> None:
        self._db = dynamodb
        self._table = table

    def claim_key(self, rec: IdempotencyRecord, now: float) -> IdempotencyRecord | None:
        """Bind ``rec.key`` to ``rec``; None when bound now, else the live record holding it."""
        item = {
            "key": str_attr(rec.key),
            "body_hash": str_attr(rec.body_hash),
            "job_id": str_attr(rec.job_id),
            "created_at": num_attr(rec.created_at),
            "shard": num_attr(rec.shard),
            "queue_token": str_attr(rec.queue_token),
            "expires_at": num_attr(rec.expires_at),
        }
        with translate_errors("claim idempotency key"):
            put = try_conditional(
                self._db.put_item,
                TableName=self._table,
                Item=item,
                ConditionExpression="attribute_not_exists(#k) OR expires_at < :now",
                ExpressionAttributeNames={"#k": "key"},
                ExpressionAttributeValues={":now": num_attr(now)},
            )
            if put is not None:
                return None
            got = self._db.get_item(
                TableName=self._table, Key={"key": str_attr(rec.key)}, ConsistentRead=True
            ).get("Item")
        if not got:  # expired and removed between the two calls: try once more
            return self.claim_key(rec, now)
        return _record(rec.key, got)

    def find_key(self, key: str, now: float) -> IdempotencyRecord | None:
        """The live record holding ``key`` (None: unbound or expired)."""
        with translate_errors("read idempotency key"):
            got = self._db.get_item(
                TableName=self._table, Key={"key": str_attr(key)}, ConsistentRead=True
            ).get("Item")
        if not got or float(read_num(got, "expires_at") or 0.0) < now:
            return None
        return _record(key, got)


def _record(key: str, got: dict[str, Any]) -> IdempotencyRecord:
    return IdempotencyRecord(
        key=key,
        body_hash=str(read_str(got, "body_hash")),
        job_id=str(read_str(got, "job_id")),
        created_at=float(read_num(got, "created_at") or 0.0),
        shard=read_int(got, "shard"),
        queue_token=str(read_str(got, "queue_token")),
        expires_at=float(read_num(got, "expires_at") or 0.0),
    )
