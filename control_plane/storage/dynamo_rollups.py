"""DynamoDB adapter of the console's per-minute rollups: table ``rollups``, PK ``series``,
SK ``minute`` (12 digits, so string order is time order), one top-level number attribute
``x:<name>`` per value, and ``expires_at`` for the table's TTL.

``add`` is one ``UpdateItem`` with ``ADD #x :n`` per value (DynamoDB adds atomically and
starts an absent number at 0), so replicas adding to the same minute never lose a count;
``put`` is the same with ``SET``. The values are top-level attributes because ``ADD`` works
only on those.
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from control_plane.storage.aws import translate_errors

VALUE_PREFIX = "x:"


def _minute_key(minute: int) -> str:
    return f"{minute:012d}"


class DynamoRollupStore:
    """``RollupStore`` on DynamoDB."""

    def __init__(self, client: Any, table: str) -> None:
        self._db = client
        self._table = table

    def _update(
        self, op: str, series: str, minute: int, values: Mapping[str, float], exp: float
    ) -> None:
        if not values:
            return
        names: dict[str, str] = {"#e": "expires_at"}
        attrs: dict[str, Any] = {":e": {"N": str(int(exp))}}
        parts = []
        for i, (name, value) in enumerate(values.items()):
            names[f"#x{i}"] = VALUE_PREFIX + name
            attrs[f":x{i}"] = {"N": str(Decimal(str(float(value))))}
            parts.append(f"#x{i} :x{i}" if op == "ADD" else f"#x{i} = :x{i}")
        if op == "ADD":
            expr = f"ADD {', '.join(parts)} SET #e = :e"
        else:
            expr = f"SET {', '.join(parts)}, #e = :e"
        self._db.update_item(
            TableName=self._table,
            Key={"series": {"S": series}, "minute": {"S": _minute_key(minute)}},
            UpdateExpression=expr,
            ExpressionAttributeNames=names,
            ExpressionAttributeValues=attrs,
        )

    def add(self, series: str, minute: int, counts: Mapping[str, float], expires_at: float) -> None:
        with translate_errors("rollup add"):
            self._update("ADD", series, minute, counts, expires_at)

    def put(self, series: str, minute: int, values: Mapping[str, float], expires_at: float) -> None:
        with translate_errors("rollup put"):
            self._update("SET", series, minute, values, expires_at)

    def read(self, series: str, first: int, last: int) -> list[tuple[int, dict[str, float]]]:
        out: list[tuple[int, dict[str, float]]] = []
        kwargs: dict[str, Any] = {
            "TableName": self._table,
            "KeyConditionExpression": "series = :s AND #m BETWEEN :a AND :b",
            "ExpressionAttributeNames": {"#m": "minute"},
            "ExpressionAttributeValues": {
                ":s": {"S": series},
                ":a": {"S": _minute_key(first)},
                ":b": {"S": _minute_key(last)},
            },
            "ConsistentRead": True,
        }
        with translate_errors("rollup read"):
            while True:
                page = self._db.query(**kwargs)
                for item in page.get("Items", []):
                    values = {
                        k[len(VALUE_PREFIX) :]: float(v["N"])
                        for k, v in item.items()
                        if k.startswith(VALUE_PREFIX)
                    }
                    out.append((int(item["minute"]["S"]), values))
                if "LastEvaluatedKey" not in page:
                    return out
                kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]
