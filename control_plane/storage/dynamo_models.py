"""DynamoDB adapter of the ``models`` table (PK ``name``, SK ``sk``).

Items of one model name:
- ``meta``              the owning tenant (names are global; the first creator owns it)
- ``v#<version:09d>``   one version: state, files, multipart upload ids, parsed config
- ``depth#<n>``         queue-depth counters (written by ``dynamo_queue``)
- ``deployment``        the deployment spec (``PUT /v1/models/{name}/deployment``)

and one item outside every model (``#`` cannot start a model name):
- ``#placement`` / ``plan``  the fleet's placement decision (JSON) with a ``revision``:
  each replica that decides writes ``revision + 1`` on condition that the revision is still
  the one it read, so concurrent deciders converge on one stored answer.
"""

from __future__ import annotations

from typing import Any

from control_plane.storage.aws import conditional_write, translate_errors, try_conditional
from control_plane.storage.dynamo_items import (
    get_i,
    get_j,
    get_n,
    get_s,
    j,
    n,
    paginate,
    s,
)
from control_plane.storage.protocols import ModelVersionRecord, PlanRecord

META = "meta"
VERSION_PREFIX = "v#"
DEPLOYMENT = "deployment"
PLAN_NAME, PLAN_SK = "#placement", "plan"


def version_sk(version: str) -> str:
    return f"{VERSION_PREFIX}{int(version):09d}"


def _to_item(rec: ModelVersionRecord) -> dict[str, Any]:
    item: dict[str, Any] = {
        "name": s(rec.name),
        "sk": s(version_sk(rec.version)),
        "version": s(rec.version),
        "tenant": s(rec.tenant),
        "state": s(rec.state),
        "created_at": n(rec.created_at),
        "files": j(rec.files),
        "uploads": j(rec.uploads),
        "max_batch_size": n(rec.max_batch_size),
        "inputs": j(rec.inputs),
        "outputs": j(rec.outputs),
        "config": j(rec.config),
    }
    if rec.platform is not None:
        item["platform"] = s(rec.platform)
    if rec.backend is not None:
        item["backend"] = s(rec.backend)
    return item


def _from_item(item: dict[str, Any]) -> ModelVersionRecord:
    return ModelVersionRecord(
        name=str(get_s(item, "name")),
        version=str(get_s(item, "version")),
        tenant=str(get_s(item, "tenant")),
        state=str(get_s(item, "state")),
        created_at=float(get_n(item, "created_at") or 0.0),
        files=get_j(item, "files") or [],
        uploads=get_j(item, "uploads") or {},
        platform=get_s(item, "platform"),
        backend=get_s(item, "backend"),
        max_batch_size=get_i(item, "max_batch_size"),
        inputs=get_j(item, "inputs") or [],
        outputs=get_j(item, "outputs") or [],
        config=get_j(item, "config") or {},
    )


class DynamoModelStore:
    """``ModelStore`` on DynamoDB."""

    def __init__(self, dynamodb: Any, table: str) -> None:
        self._db = dynamodb
        self._table = table

    def claim_name(self, name: str, tenant: str, now: float) -> str:
        """Make ``tenant`` the owner of ``name`` unless another tenant owns it; the owner."""
        claimed = conditional_write(
            "claim model name",
            self._db.put_item,
            TableName=self._table,
            Item={"name": s(name), "sk": s(META), "tenant": s(tenant), "created_at": n(now)},
            ConditionExpression="attribute_not_exists(sk) OR tenant = :t",
            ExpressionAttributeValues={":t": s(tenant)},
        )
        if claimed is not None:
            return tenant
        return self.owner(name) or tenant

    def release_name(self, name: str, tenant: str) -> bool:
        """Delete the name's claim item iff ``tenant`` owns it and no version item is
        there (a Query first; see the protocol for the race this leaves)."""
        with translate_errors("release model name"):
            found = self._db.query(
                TableName=self._table,
                KeyConditionExpression="#n = :n AND begins_with(sk, :v)",
                ExpressionAttributeNames={"#n": "name"},
                ExpressionAttributeValues={":n": s(name), ":v": s(VERSION_PREFIX)},
                ConsistentRead=True,
                Limit=1,
            )
            if found.get("Items"):
                return False
            done = try_conditional(
                self._db.delete_item,
                TableName=self._table,
                Key={"name": s(name), "sk": s(META)},
                ConditionExpression="tenant = :t",
                ExpressionAttributeValues={":t": s(tenant)},
            )
        return done is not None

    def owner(self, name: str) -> str | None:
        with translate_errors("get model owner"):
            item = self._db.get_item(
                TableName=self._table,
                Key={"name": s(name), "sk": s(META)},
                ConsistentRead=True,
            ).get("Item")
        return get_s(item, "tenant") if item else None

    def put_version(self, rec: ModelVersionRecord) -> bool:
        """Store a new version; False when that version exists."""
        done = conditional_write(
            "create model version",
            self._db.put_item,
            TableName=self._table,
            Item=_to_item(rec),
            ConditionExpression="attribute_not_exists(sk)",
        )
        return done is not None

    def get_version(self, name: str, version: str) -> ModelVersionRecord | None:
        with translate_errors("get model version"):
            item = self._db.get_item(
                TableName=self._table,
                Key={"name": s(name), "sk": s(version_sk(version))},
                ConsistentRead=True,
            ).get("Item")
        return _from_item(item) if item else None

    def list_versions(self, name: str) -> list[ModelVersionRecord]:
        """Every version of ``name``, newest (highest number) first."""
        with translate_errors("list model versions"):
            items = list(
                paginate(
                    self._db,
                    "query",
                    TableName=self._table,
                    KeyConditionExpression="#n = :n AND begins_with(sk, :p)",
                    ExpressionAttributeNames={"#n": "name"},
                    ExpressionAttributeValues={":n": s(name), ":p": s(VERSION_PREFIX)},
                    ConsistentRead=True,
                    ScanIndexForward=False,
                )
            )
        return [_from_item(it) for it in items]

    def mark_ready(self, rec: ModelVersionRecord) -> bool:
        """UPLOADING -> READY with the parsed config; False when not UPLOADING any more."""
        done = conditional_write(
            "commit model version",
            self._db.update_item,
            TableName=self._table,
            Key={"name": s(rec.name), "sk": s(version_sk(rec.version))},
            UpdateExpression=(
                "SET #st = :ready, platform = :p, backend = :b, max_batch_size = :m, "
                "inputs = :i, outputs = :o, config = :c"
            ),
            ConditionExpression="#st = :uploading",
            ExpressionAttributeNames={"#st": "state"},
            ExpressionAttributeValues={
                ":ready": s("READY"),
                ":uploading": s("UPLOADING"),
                ":p": s(rec.platform or ""),
                ":b": s(rec.backend or ""),
                ":m": n(rec.max_batch_size),
                ":i": j(rec.inputs),
                ":o": j(rec.outputs),
                ":c": j(rec.config),
            },
        )
        return done is not None

    def delete_version(self, name: str, version: str) -> bool:
        """Remove a version; False when it does not exist."""
        done = conditional_write(
            "delete model version",
            self._db.delete_item,
            TableName=self._table,
            Key={"name": s(name), "sk": s(version_sk(version))},
            ConditionExpression="attribute_exists(sk)",
        )
        return done is not None

    def list_names(self) -> list[tuple[str, str]]:
        """(name, owning tenant) of every model (a Scan of the small models table)."""
        with translate_errors("list models"):
            items = paginate(
                self._db,
                "scan",
                TableName=self._table,
                FilterExpression="sk = :m",
                ExpressionAttributeValues={":m": s(META)},
            )
            out = [(str(get_s(it, "name")), str(get_s(it, "tenant"))) for it in items]
        return sorted(out)

    # ------------------------------------------------------------------ deployments
    def put_deployment(self, name: str, spec: dict[str, Any], now: float) -> None:
        """Store (replace) the deployment spec of ``name``."""
        with translate_errors("put deployment"):
            self._db.put_item(
                TableName=self._table,
                Item={
                    "name": s(name),
                    "sk": s(DEPLOYMENT),
                    "spec": j(spec),
                    "updated_at": n(now),
                },
            )

    def get_deployment(self, name: str) -> dict[str, Any] | None:
        with translate_errors("get deployment"):
            item = self._db.get_item(
                TableName=self._table,
                Key={"name": s(name), "sk": s(DEPLOYMENT)},
                ConsistentRead=True,
            ).get("Item")
        return get_j(item, "spec") if item else None

    def list_deployments(self) -> dict[str, dict[str, Any]]:
        """name -> spec of every deployment (a Scan of the small models table)."""
        with translate_errors("list deployments"):
            items = paginate(
                self._db,
                "scan",
                TableName=self._table,
                FilterExpression="sk = :d",
                ExpressionAttributeValues={":d": s(DEPLOYMENT)},
                ConsistentRead=True,
            )
            return {str(get_s(it, "name")): get_j(it, "spec") or {} for it in items}

    def get_plan(self) -> PlanRecord | None:
        with translate_errors("get placement"):
            item = self._db.get_item(
                TableName=self._table,
                Key={"name": s(PLAN_NAME), "sk": s(PLAN_SK)},
                ConsistentRead=True,
            ).get("Item")
        if not item:
            return None
        return PlanRecord(
            revision=get_i(item, "revision"),
            planned_at=float(get_n(item, "planned_at") or 0.0),
            doc=get_j(item, "doc") or {},
        )

    def save_plan(self, doc: dict[str, Any], planned_at: float, expected_revision: int) -> bool:
        """Write the decision as ``expected_revision + 1``; False when another writer won."""
        condition = "attribute_not_exists(sk)" if expected_revision == 0 else "revision = :expected"
        values = {":expected": n(expected_revision)} if expected_revision else None
        kwargs: dict[str, Any] = {
            "TableName": self._table,
            "Item": {
                "name": s(PLAN_NAME),
                "sk": s(PLAN_SK),
                "revision": n(expected_revision + 1),
                "planned_at": n(planned_at),
                "doc": j(doc),
            },
            "ConditionExpression": condition,
        }
        if values:
            kwargs["ExpressionAttributeValues"] = values
        return conditional_write("save placement", self._db.put_item, **kwargs) is not None
