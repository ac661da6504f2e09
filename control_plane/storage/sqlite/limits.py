"""SQLite adapter of the limits store (``protocols_limits.py``), same meaning as
``dynamo_limits.py``:

- ``tenant_quotas``  one row per tenant with its own quotas (NULL: the settings' default)
- ``key_limits``     the highest priority an API key may submit at
- ``tenant_load``    queued and running counters per tenant (``+=`` by every replica)
- ``region_defaults`` ``default_region`` / ``regions_allowed`` (JSON list) of a tenant or an
  API key (schema version 10)
"""

from __future__ import annotations

import json

from control_plane.storage.protocols_limits import QuotaRecord, RegionDefaultsRecord, TenantLoad
from control_plane.storage.sqlite.db import Database, translate

DDL: list[str] = [
    """CREATE TABLE IF NOT EXISTS tenant_quotas (
        tenant TEXT PRIMARY KEY,
        max_queued INTEGER,
        max_running INTEGER,
        submit_rate REAL,
        submit_burst INTEGER,
        weight REAL,
        updated_at REAL NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS key_limits (
        key_id TEXT PRIMARY KEY,
        max_priority INTEGER NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS tenant_load (
        tenant TEXT PRIMARY KEY,
        queued INTEGER NOT NULL,
        running INTEGER NOT NULL
    )""",
]

DDL_REGIONS: list[str] = [
    """CREATE TABLE IF NOT EXISTS region_defaults (
        scope TEXT NOT NULL,
        name TEXT NOT NULL,
        default_region TEXT,
        regions_allowed TEXT NOT NULL,
        updated_at REAL NOT NULL,
        PRIMARY KEY (scope, name)
    )""",
]

_COLUMNS = "tenant, max_queued, max_running, submit_rate, submit_burst, weight, updated_at"
_PUT_QUOTA = f"INSERT OR REPLACE INTO tenant_quotas ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)"  # noqa: S608 - constant
_GET_QUOTA = f"SELECT {_COLUMNS} FROM tenant_quotas WHERE tenant = ?"  # noqa: S608 - constant
_LIST_QUOTAS = f"SELECT {_COLUMNS} FROM tenant_quotas ORDER BY tenant"  # noqa: S608 - constant


class SqliteLimitsStore:
    """``LimitsStore`` on the embedded SQLite file."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def put_quota(self, rec: QuotaRecord) -> None:
        row = (
            rec.tenant,
            rec.max_queued,
            rec.max_running,
            rec.submit_rate,
            rec.submit_burst,
            rec.weight,
            rec.updated_at,
        )
        with self._db.writing("put quota") as conn:
            conn.execute(_PUT_QUOTA, row)

    def get_quota(self, tenant: str) -> QuotaRecord | None:
        with self._db.reading("get quota") as conn:
            row = conn.execute(_GET_QUOTA, (tenant,)).fetchone()
        return None if row is None else QuotaRecord(*row)

    def delete_quota(self, tenant: str) -> bool:
        with self._db.writing("delete quota") as conn:
            return (
                conn.execute("DELETE FROM tenant_quotas WHERE tenant = ?", (tenant,)).rowcount > 0
            )

    def list_quotas(self) -> list[QuotaRecord]:
        with self._db.reading("list quotas") as conn:
            rows = conn.execute(_LIST_QUOTAS).fetchall()
        return [QuotaRecord(*r) for r in rows]

    def put_key_priority(self, key_id: str, max_priority: int | None) -> None:
        with self._db.writing("put key limit") as conn:
            if max_priority is None:
                conn.execute("DELETE FROM key_limits WHERE key_id = ?", (key_id,))
            else:
                conn.execute(
                    "INSERT OR REPLACE INTO key_limits (key_id, max_priority) VALUES (?, ?)",
                    (key_id, max_priority),
                )

    def key_priorities(self) -> dict[str, int]:
        with self._db.reading("read key limits") as conn:
            rows = conn.execute("SELECT key_id, max_priority FROM key_limits").fetchall()
        return {str(k): int(v) for k, v in rows}

    def add_load(self, tenant: str, queued: int, running: int) -> None:
        if queued == 0 and running == 0:
            return
        with self._db.writing("count tenant load") as conn:
            conn.execute(
                "INSERT INTO tenant_load (tenant, queued, running) VALUES (?, ?, ?) "
                "ON CONFLICT (tenant) DO UPDATE SET queued = queued + excluded.queued, "
                "running = running + excluded.running",
                (tenant, queued, running),
            )

    def loads(self) -> dict[str, TenantLoad]:
        with translate("read tenant load"):
            rows = (
                self._db.read()
                .execute("SELECT tenant, queued, running FROM tenant_load")
                .fetchall()
            )
        return {str(t): TenantLoad(max(0, int(q)), max(0, int(r))) for t, q, r in rows}

    # ------------------------------------------------------------------ region defaults
    def put_region_defaults(self, rec: RegionDefaultsRecord) -> None:
        row = (
            rec.scope,
            rec.name,
            rec.default_region,
            json.dumps(list(rec.regions_allowed)),
            rec.updated_at,
        )
        with self._db.writing("put region defaults") as conn:
            conn.execute(
                "INSERT OR REPLACE INTO region_defaults "
                "(scope, name, default_region, regions_allowed, updated_at) "
                "VALUES (?, ?, ?, ?, ?)",
                row,
            )

    def delete_region_defaults(self, scope: str, name: str) -> bool:
        with self._db.writing("delete region defaults") as conn:
            return (
                conn.execute(
                    "DELETE FROM region_defaults WHERE scope = ? AND name = ?", (scope, name)
                ).rowcount
                > 0
            )

    def list_region_defaults(self) -> list[RegionDefaultsRecord]:
        with translate("list region defaults"):
            rows = (
                self._db.read()
                .execute(
                    "SELECT scope, name, default_region, regions_allowed, updated_at "
                    "FROM region_defaults ORDER BY scope, name"
                )
                .fetchall()
            )
        return [
            RegionDefaultsRecord(str(sc), str(nm), dr, tuple(json.loads(ra)), float(at))
            for sc, nm, dr, ra, at in rows
        ]
