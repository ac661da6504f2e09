"""SQLite adapter of model names, versions, deployment specs and the placement plan.

Same meaning as ``dynamo_models.py``; one table per kind of item instead of one keyed table:

- ``model_names``     the owning tenant of a name (``meta`` item there)
- ``model_versions``  one row per (name, integer version): ``state`` is a column because
                      ``mark_ready`` is conditioned on it; lists and maps are JSON text
- ``deployments``     the deployment spec of a model (JSON)
- ``placement_plan``  the single placement decision (row ``id = 1``), fenced by ``revision``

Versions are keyed by ``int(version)`` (``"1"`` and ``"01"`` are the same version, as the
DynamoDB adapter's ``v#<version:09d>`` sort key makes them) and listed by that number.
"""

from __future__ import annotations

import json
from typing import Any

from control_plane.storage.protocols import ModelVersionRecord, PlanRecord
from control_plane.storage.sqlite.db import Database, translate

DDL: list[str] = [
    """CREATE TABLE IF NOT EXISTS model_names (
        name TEXT PRIMARY KEY,
        tenant TEXT NOT NULL,
        created_at REAL NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS model_versions (
        name TEXT NOT NULL,
        version_num INTEGER NOT NULL,
        version TEXT NOT NULL,
        tenant TEXT NOT NULL,
        state TEXT NOT NULL,
        created_at REAL NOT NULL,
        platform TEXT,
        backend TEXT,
        max_batch_size INTEGER NOT NULL,
        files TEXT NOT NULL,
        uploads TEXT NOT NULL,
        inputs TEXT NOT NULL,
        outputs TEXT NOT NULL,
        config TEXT NOT NULL,
        PRIMARY KEY (name, version_num)
    )""",
    """CREATE TABLE IF NOT EXISTS deployments (
        name TEXT PRIMARY KEY,
        spec TEXT NOT NULL,
        updated_at REAL NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS placement_plan (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        revision INTEGER NOT NULL,
        planned_at REAL NOT NULL,
        doc TEXT NOT NULL
    )""",
]

_VERSION_COLUMNS = (
    "name, version, tenant, state, created_at, platform, backend, max_batch_size, "
    "files, uploads, inputs, outputs, config"
)


def _json(v: Any) -> str:
    return json.dumps(v, separators=(",", ":"))


def _version(row: tuple[Any, ...]) -> ModelVersionRecord:
    (name, version, tenant, state, created_at, platform, backend, mbs, files, uploads) = row[:10]
    inputs, outputs, config = row[10:]
    return ModelVersionRecord(
        name=name,
        version=version,
        tenant=tenant,
        state=state,
        created_at=float(created_at),
        files=json.loads(files),
        uploads=json.loads(uploads),
        platform=platform,
        backend=backend,
        max_batch_size=int(mbs),
        inputs=json.loads(inputs),
        outputs=json.loads(outputs),
        config=json.loads(config),
    )


class SqliteModelStore:
    """``ModelStore`` and ``DeploymentStore`` on SQLite (one class, as ``DynamoModelStore``).

    Conditions, each checked and applied in one transaction or one conditional statement:

    - ``claim_name``: stores ``tenant`` as owner when the name has none, or refreshes the
      claim when ``tenant`` already owns it; returns the owner (another tenant's claim wins).
    - ``put_version``: inserts when that (name, version number) is absent; False otherwise.
    - ``mark_ready``: UPLOADING -> READY with the parsed config (``platform``/``backend``
      stored as ``""`` when None); False when the version is missing or not UPLOADING.
    - ``delete_version``: False when the version does not exist.
    - ``put_deployment``: unconditional replace.
    - ``save_plan``: writes revision ``expected_revision + 1`` when no plan exists
      (``expected_revision == 0``) or the stored revision equals ``expected_revision``;
      False when another writer got there first.

    Reads see the last committed state. ``list_versions`` is newest (highest number) first,
    ``list_names`` sorted by (name, tenant).
    """

    def __init__(self, db: Database) -> None:
        self._db = db

    # ------------------------------------------------------------------ names & versions
    def claim_name(self, name: str, tenant: str, now: float) -> str:
        with self._db.writing("claim model name") as conn:
            row = conn.execute("SELECT tenant FROM model_names WHERE name = ?", (name,)).fetchone()
            if row is not None and row[0] != tenant:
                return str(row[0])
            conn.execute(
                "INSERT INTO model_names (name, tenant, created_at) VALUES (?, ?, ?) "
                "ON CONFLICT (name) DO UPDATE SET created_at = excluded.created_at",
                (name, tenant, now),
            )
        return tenant

    def release_name(self, name: str, tenant: str) -> bool:
        with self._db.writing("release model name") as conn:
            if conn.execute("SELECT 1 FROM model_versions WHERE name = ?", (name,)).fetchone():
                return False
            cur = conn.execute(
                "DELETE FROM model_names WHERE name = ? AND tenant = ?", (name, tenant)
            )
        return cur.rowcount == 1

    def owner(self, name: str) -> str | None:
        with translate("get model owner"):
            row = (
                self._db.read()
                .execute("SELECT tenant FROM model_names WHERE name = ?", (name,))
                .fetchone()
            )
        return None if row is None else str(row[0])

    def put_version(self, rec: ModelVersionRecord) -> bool:
        with self._db.writing("create model version") as conn:
            cur = conn.execute(
                "INSERT INTO model_versions (name, version_num, version, tenant, state, "
                "created_at, platform, backend, max_batch_size, files, uploads, inputs, "
                "outputs, config) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (name, version_num) DO NOTHING",
                (
                    rec.name,
                    int(rec.version),
                    rec.version,
                    rec.tenant,
                    rec.state,
                    rec.created_at,
                    rec.platform,
                    rec.backend,
                    rec.max_batch_size,
                    _json(rec.files),
                    _json(rec.uploads),
                    _json(rec.inputs),
                    _json(rec.outputs),
                    _json(rec.config),
                ),
            )
            return cur.rowcount == 1

    def get_version(self, name: str, version: str) -> ModelVersionRecord | None:
        with translate("get model version"):
            row = (
                self._db.read()
                .execute(
                    f"SELECT {_VERSION_COLUMNS} FROM model_versions "  # noqa: S608 - constant
                    "WHERE name = ? AND version_num = ?",
                    (name, int(version)),
                )
                .fetchone()
            )
        return None if row is None else _version(row)

    def list_versions(self, name: str) -> list[ModelVersionRecord]:
        with translate("list model versions"):
            rows = (
                self._db.read()
                .execute(
                    f"SELECT {_VERSION_COLUMNS} FROM model_versions "  # noqa: S608 - constant
                    "WHERE name = ? ORDER BY version_num DESC",
                    (name,),
                )
                .fetchall()
            )
        return [_version(r) for r in rows]

    def mark_ready(self, rec: ModelVersionRecord) -> bool:
        with self._db.writing("commit model version") as conn:
            cur = conn.execute(
                "UPDATE model_versions SET state = 'READY', platform = ?, backend = ?, "
                "max_batch_size = ?, inputs = ?, outputs = ?, config = ? "
                "WHERE name = ? AND version_num = ? AND state = 'UPLOADING'",
                (
                    rec.platform or "",
                    rec.backend or "",
                    rec.max_batch_size,
                    _json(rec.inputs),
                    _json(rec.outputs),
                    _json(rec.config),
                    rec.name,
                    int(rec.version),
                ),
            )
            return cur.rowcount == 1

    def delete_version(self, name: str, version: str) -> bool:
        with self._db.writing("delete model version") as conn:
            cur = conn.execute(
                "DELETE FROM model_versions WHERE name = ? AND version_num = ?",
                (name, int(version)),
            )
            return cur.rowcount == 1

    def list_names(self) -> list[tuple[str, str]]:
        with self._db.reading("list models") as conn:
            rows = conn.execute("SELECT name, tenant FROM model_names").fetchall()
        return sorted((str(n), str(t)) for n, t in rows)

    # ------------------------------------------------------------------ deployments
    def put_deployment(self, name: str, spec: dict[str, Any], now: float) -> None:
        with self._db.writing("put deployment") as conn:
            conn.execute(
                "INSERT INTO deployments (name, spec, updated_at) VALUES (?, ?, ?) "
                "ON CONFLICT (name) DO UPDATE SET spec = excluded.spec, "
                "updated_at = excluded.updated_at",
                (name, _json(spec), now),
            )

    def get_deployment(self, name: str) -> dict[str, Any] | None:
        with translate("get deployment"):
            row = (
                self._db.read()
                .execute("SELECT spec FROM deployments WHERE name = ?", (name,))
                .fetchone()
            )
        return None if row is None else dict(json.loads(row[0]))

    def list_deployments(self) -> dict[str, dict[str, Any]]:
        with self._db.reading("list deployments") as conn:
            rows = conn.execute("SELECT name, spec FROM deployments").fetchall()
        return {str(name): json.loads(spec) or {} for name, spec in rows}

    def get_plan(self) -> PlanRecord | None:
        with translate("get placement"):
            row = (
                self._db.read()
                .execute("SELECT revision, planned_at, doc FROM placement_plan WHERE id = 1")
                .fetchone()
            )
        if row is None:
            return None
        return PlanRecord(revision=int(row[0]), planned_at=float(row[1]), doc=json.loads(row[2]))

    def save_plan(self, doc: dict[str, Any], planned_at: float, expected_revision: int) -> bool:
        values = (expected_revision + 1, planned_at, _json(doc))
        with self._db.writing("save placement") as conn:
            if expected_revision == 0:
                cur = conn.execute(
                    "INSERT INTO placement_plan (id, revision, planned_at, doc) "
                    "VALUES (1, ?, ?, ?) ON CONFLICT (id) DO NOTHING",
                    values,
                )
            else:
                cur = conn.execute(
                    "UPDATE placement_plan SET revision = ?, planned_at = ?, doc = ? "
                    "WHERE id = 1 AND revision = ?",
                    (*values, expected_revision),
                )
            return cur.rowcount == 1


# The same class serves both protocols (as ``DynamoModelStore`` does on DynamoDB).
SqliteDeploymentStore = SqliteModelStore
