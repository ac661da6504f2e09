"""DynamoDB adapter of the limits store (``protocols_limits.py``): items in the ``capacity``
table (PK ``pk``, SK ``sk``), each kind in one partition, so every listing is one Query
(a fleet has tens of tenants, not millions):

- ``pk = "quota"``,    ``sk = <tenant>``: a tenant's own quotas (absent attribute: default)
- ``pk = "keylimit"``, ``sk = <key id>``: ``max_priority`` of an API key
- ``pk = "load"``,     ``sk = <tenant>``: ``queued`` / ``running`` counters, ``ADD`` by every
  replica (each replica adds its counted transitions in batches, a few writes a second, so
  one item per tenant is no hot key)
- ``pk = "regions"``,  ``sk = <scope>#<name>``: region defaults of a tenant (``tenant#acme``)
  or an API key (``key#key_…``): ``default_region`` (absent: none), ``regions_allowed``
  (a JSON list)
"""

from __future__ import annotations

from typing import Any

from control_plane.storage.aws import conditional_write, translate_errors
from control_plane.storage.dynamo_items import (
    json_attr,
    num_attr,
    paginate,
    read_int,
    read_json,
    read_num,
    read_str,
    str_attr,
)
from control_plane.storage.protocols_limits import QuotaRecord, RegionDefaultsRecord, TenantLoad

QUOTA_PK, KEY_PK, LOAD_PK, REGIONS_PK = "quota", "keylimit", "load", "regions"
_INT_FIELDS = ("max_queued", "max_running", "submit_burst")
_FLOAT_FIELDS = ("submit_rate", "weight")


class DynamoLimitsStore:
    """``LimitsStore`` on DynamoDB (see the module docstring for the keys)."""

    def __init__(self, db: Any, table: str) -> None:
        self._db = db
        self._table = table

    def _query(self, pk: str, what: str) -> list[dict[str, Any]]:
        with translate_errors(what):
            return list(
                paginate(
                    self._db,
                    "query",
                    TableName=self._table,
                    KeyConditionExpression="pk = :p",
                    ExpressionAttributeValues={":p": str_attr(pk)},
                    ConsistentRead=True,
                )
            )

    # ------------------------------------------------------------------ quotas
    def put_quota(self, rec: QuotaRecord) -> None:
        item: dict[str, Any] = {
            "pk": str_attr(QUOTA_PK),
            "sk": str_attr(rec.tenant),
            "updated_at": num_attr(rec.updated_at),
        }
        for name in (*_INT_FIELDS, *_FLOAT_FIELDS):
            value = getattr(rec, name)
            if value is not None:
                item[name] = num_attr(value)
        with translate_errors("put quota"):
            self._db.put_item(TableName=self._table, Item=item)

    @staticmethod
    def _quota(item: dict[str, Any]) -> QuotaRecord:
        def i(name: str) -> int | None:
            return read_int(item, name) if name in item else None

        def f(name: str) -> float | None:
            return read_num(item, name) if name in item else None

        return QuotaRecord(
            tenant=str(read_str(item, "sk")),
            max_queued=i("max_queued"),
            max_running=i("max_running"),
            submit_rate=f("submit_rate"),
            submit_burst=i("submit_burst"),
            weight=f("weight"),
            updated_at=float(read_num(item, "updated_at") or 0.0),
        )

    def get_quota(self, tenant: str) -> QuotaRecord | None:
        with translate_errors("get quota"):
            out = self._db.get_item(
                TableName=self._table,
                Key={"pk": str_attr(QUOTA_PK), "sk": str_attr(tenant)},
                ConsistentRead=True,
            )
        item = out.get("Item")
        return None if item is None else self._quota(item)

    def delete_quota(self, tenant: str) -> bool:
        done = conditional_write(
            "delete quota",
            self._db.delete_item,
            TableName=self._table,
            Key={"pk": str_attr(QUOTA_PK), "sk": str_attr(tenant)},
            ConditionExpression="attribute_exists(pk)",
        )
        return done is not None

    def list_quotas(self) -> list[QuotaRecord]:
        items = self._query(QUOTA_PK, "list quotas")
        return sorted((self._quota(it) for it in items), key=lambda q: q.tenant)

    # ------------------------------------------------------------------ key limits
    def put_key_priority(self, key_id: str, max_priority: int | None) -> None:
        key = {"pk": str_attr(KEY_PK), "sk": str_attr(key_id)}
        with translate_errors("put key limit"):
            if max_priority is None:
                self._db.delete_item(TableName=self._table, Key=key)
            else:
                self._db.put_item(
                    TableName=self._table, Item={**key, "max_priority": num_attr(max_priority)}
                )

    def key_priorities(self) -> dict[str, int]:
        items = self._query(KEY_PK, "read key limits")
        return {str(read_str(it, "sk")): read_int(it, "max_priority") for it in items}

    # ------------------------------------------------------------------ load counters
    def add_load(self, tenant: str, queued: int, running: int) -> None:
        if queued == 0 and running == 0:
            return
        with translate_errors("count tenant load"):
            self._db.update_item(
                TableName=self._table,
                Key={"pk": str_attr(LOAD_PK), "sk": str_attr(tenant)},
                UpdateExpression="ADD queued :q, running :r",
                ExpressionAttributeValues={":q": num_attr(queued), ":r": num_attr(running)},
            )

    def loads(self) -> dict[str, TenantLoad]:
        items = self._query(LOAD_PK, "read tenant load")
        return {
            str(read_str(it, "sk")): TenantLoad(
                max(0, read_int(it, "queued")), max(0, read_int(it, "running"))
            )
            for it in items
        }

    # ------------------------------------------------------------------ region defaults
    def put_region_defaults(self, rec: RegionDefaultsRecord) -> None:
        item: dict[str, Any] = {
            "pk": str_attr(REGIONS_PK),
            "sk": str_attr(f"{rec.scope}#{rec.name}"),
            "regions_allowed": json_attr(list(rec.regions_allowed)),
            "updated_at": num_attr(rec.updated_at),
        }
        if rec.default_region is not None:
            item["default_region"] = str_attr(rec.default_region)
        with translate_errors("put region defaults"):
            self._db.put_item(TableName=self._table, Item=item)

    def delete_region_defaults(self, scope: str, name: str) -> bool:
        done = conditional_write(
            "delete region defaults",
            self._db.delete_item,
            TableName=self._table,
            Key={"pk": str_attr(REGIONS_PK), "sk": str_attr(f"{scope}#{name}")},
            ConditionExpression="attribute_exists(pk)",
        )
        return done is not None

    def list_region_defaults(self) -> list[RegionDefaultsRecord]:
        out = []
        for it in self._query(REGIONS_PK, "list region defaults"):
            scope, _, name = str(read_str(it, "sk")).partition("#")
            out.append(
                RegionDefaultsRecord(
                    scope=scope,
                    name=name,
                    default_region=read_str(it, "default_region"),
                    regions_allowed=tuple(read_json(it, "regions_allowed") or ()),
                    updated_at=float(read_num(it, "updated_at") or 0.0),
                )
            )
        return sorted(out, key=lambda r: (r.scope, r.name))
