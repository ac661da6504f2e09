"""DynamoDB adapter of the capacity store: one ``capacity`` table, PK ``pk``, SK ``sk``.

Items:

- ``pk = "pools"``, ``sk = <name>``: a pool's spec (JSON string); one partition, so
  ``list_pools`` is one Query (a fleet has a handful of pools).
- ``pk = "decision"``, ``sk = "fleet"``: the fleet's capacity decision (JSON) with a
  ``revision``. ``save_decision`` is a conditional put; two replicas deciding at once::

      A reads rev 7 ─ decides ─ put(rev 8 if rev = 7) ✓ ─ acts
      B reads rev 7 ─ decides ─────────── put(rev 8 if rev = 7) ✗ ─ reads rev 8, does nothing

- ``pk = "events#<pool>"``, ``sk = <at in µs, 17 digits>#<n>#<random>``: the decision log,
  newest first by a descending Query; events expire through the table's TTL
  (``expires_at``, ``EVENT_TTL_S`` after they happen), so ``keep`` is a lower bound here.
"""

from __future__ import annotations

import secrets
from typing import Any

from control_plane.storage.aws import conditional_write, translate_errors
from control_plane.storage.definitions import TTL_ATTRIBUTE
from control_plane.storage.dynamo_items import (
    json_attr,
    num_attr,
    read_int,
    read_json,
    read_num,
    read_str,
    str_attr,
)
from control_plane.storage.protocols_capacity import CapacityRecord, PoolRecord

POOLS_PK = "pools"
DECISION_PK, DECISION_SK = "decision", "fleet"
EVENT_TTL_S = 7 * 86400


class DynamoCapacityStore:
    """``CapacityStore`` on DynamoDB (see the module docstring for the keys)."""

    def __init__(self, db: Any, table: str) -> None:
        self._db = db
        self._table = table

    def put_pool(self, name: str, spec: dict[str, Any], now: float) -> PoolRecord:
        with translate_errors("put pool"):
            out = self._db.update_item(
                TableName=self._table,
                Key={"pk": str_attr(POOLS_PK), "sk": str_attr(name)},
                UpdateExpression=(
                    "SET spec = :spec, updated_at = :now, "
                    "created_at = if_not_exists(created_at, :now)"
                ),
                ExpressionAttributeValues={":spec": json_attr(spec), ":now": num_attr(now)},
                ReturnValues="ALL_NEW",
            )
        return _pool(out["Attributes"])

    def get_pool(self, name: str) -> PoolRecord | None:
        with translate_errors("get pool"):
            item = self._db.get_item(
                TableName=self._table,
                Key={"pk": str_attr(POOLS_PK), "sk": str_attr(name)},
                ConsistentRead=True,
            ).get("Item")
        return None if not item else _pool(item)

    def list_pools(self) -> list[PoolRecord]:
        out: list[PoolRecord] = []
        kwargs: dict[str, Any] = {
            "TableName": self._table,
            "KeyConditionExpression": "pk = :pk",
            "ExpressionAttributeValues": {":pk": str_attr(POOLS_PK)},
            "ConsistentRead": True,
        }
        with translate_errors("list pools"):
            while True:
                page = self._db.query(**kwargs)
                out.extend(_pool(it) for it in page.get("Items", []))
                if not page.get("LastEvaluatedKey"):
                    break
                kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]
        return sorted(out, key=lambda p: p.name)

    def delete_pool(self, name: str) -> bool:
        with translate_errors("delete pool"):
            out = self._db.delete_item(
                TableName=self._table,
                Key={"pk": str_attr(POOLS_PK), "sk": str_attr(name)},
                ReturnValues="ALL_OLD",
            )
        return bool(out.get("Attributes"))

    def get_decision(self) -> CapacityRecord | None:
        with translate_errors("get capacity decision"):
            item = self._db.get_item(
                TableName=self._table,
                Key={"pk": str_attr(DECISION_PK), "sk": str_attr(DECISION_SK)},
                ConsistentRead=True,
            ).get("Item")
        if not item:
            return None
        return CapacityRecord(
            revision=read_int(item, "revision"),
            decided_at=float(read_num(item, "decided_at") or 0.0),
            doc=read_json(item, "doc") or {},
        )

    def save_decision(self, doc: dict[str, Any], decided_at: float, expected_revision: int) -> bool:
        condition = "attribute_not_exists(pk)" if expected_revision == 0 else "revision = :expected"
        kwargs: dict[str, Any] = {
            "TableName": self._table,
            "Item": {
                "pk": str_attr(DECISION_PK),
                "sk": str_attr(DECISION_SK),
                "revision": num_attr(expected_revision + 1),
                "decided_at": num_attr(decided_at),
                "doc": json_attr(doc),
            },
            "ConditionExpression": condition,
        }
        if expected_revision:
            kwargs["ExpressionAttributeValues"] = {":expected": num_attr(expected_revision)}
        return conditional_write("save capacity decision", self._db.put_item, **kwargs) is not None

    def append_events(self, pool: str, events: list[dict[str, Any]], keep: int) -> None:
        if not events:
            return
        nonce = secrets.token_hex(4)
        items = [
            {
                "PutRequest": {
                    "Item": {
                        "pk": str_attr(f"events#{pool}"),
                        "sk": str_attr(f"{int(float(e['at']) * 1e6):017d}#{i:04d}#{nonce}"),
                        "doc": json_attr(e),
                        TTL_ATTRIBUTE: num_attr(int(float(e["at"])) + EVENT_TTL_S),
                    }
                }
            }
            for i, e in enumerate(events)
        ]
        with translate_errors("append capacity events"):
            for start in range(0, len(items), 25):
                pending: dict[str, Any] = {self._table: items[start : start + 25]}
                while pending:
                    out = self._db.batch_write_item(RequestItems=pending)
                    pending = out.get("UnprocessedItems") or {}

    def list_events(self, pool: str, limit: int) -> list[dict[str, Any]]:
        if limit <= 0:
            return []
        with translate_errors("list capacity events"):
            page = self._db.query(
                TableName=self._table,
                KeyConditionExpression="pk = :pk",
                ExpressionAttributeValues={":pk": str_attr(f"events#{pool}")},
                ScanIndexForward=False,
                Limit=limit,
                ConsistentRead=True,
            )
        return [read_json(it, "doc") for it in page.get("Items", [])]


def _pool(item: dict[str, Any]) -> PoolRecord:
    return PoolRecord(
        name=str(read_str(item, "sk")),
        spec=read_json(item, "spec") or {},
        created_at=float(read_num(item, "created_at") or 0.0),
        updated_at=float(read_num(item, "updated_at") or 0.0),
    )
