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

from typing import Any, cast

from gpufleet.wire import ModelVersionState

from control_plane.storage.aws import conditional_write, translate_errors, try_conditional
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
from control_plane.storage.protocols import ModelVersionRecord, PlanRecord

META = "meta"
VERSION_PREFIX = "v#"
DEPLOYMENT = "deployment"
PLAN_NAME, PLAN_SK = "#placement", "plan"


def version_sk(version: str) -> str:
    return f"{VERSION_PREFIX}{int(version):09d}"


def _to_item(rec: ModelVersionRecord) -> dict[str, Any]:
    item: dict[str, Any] = {
        "name": str_attr(rec.name),
        "sk": str_attr(version_sk(rec.version)),
        "version": str_attr(rec.version),
        "tenant": str_attr(rec.tenant),
        "state": str_attr(rec.state),
        "created_at": num_attr(rec.created_at),
        "files": json_attr(rec.files),
        "uploads": json_attr(rec.uploads),
        "max_batch_size": num_attr(rec.max_batch_size),
        "inputs": json_attr(rec.inputs),
        "outputs": json_attr(rec.outputs),
        "config": json_attr(rec.config),
    }
    if rec.platform is not None:
        item["platform"] = str_attr(rec.platform)
    if rec.backend is not None:
        item["backend"] = str_attr(rec.backend)
    return item


def _from_item(item: dict[str, Any]) -> ModelVersionRecord:
    return ModelVersionRecord(
        name=str(read_str(item, "name")),
        version=str(read_str(item, "version")),
        tenant=str(read_str(item, "tenant")),
        state=cast(ModelVersionState, read_str(item, "state")),  # as it was written
        created_at=float(read_num(item, "created_at") or 0.0),
        files=read_json(item, "files") or [],
        uploads=read_json(item, "uploads") or {},
        platform=read_str(item, "platform"),
        backend=read_str(item, "backend"),
        max_batch_size=read_int(item, "max_batch_size"),
        inputs=read_json(item, "inputs") or [],
        outputs=read_json(item, "outputs") or [],
        config=read_json(item, "config") or {},
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
            Item={
                "name": str_attr(name),
                "sk": str_attr(META),
                "tenant": str_attr(tenant),
                "created_at": num_attr(now),
            },
            ConditionExpression="attribute_not_exists(sk) OR tenant = :t",
            ExpressionAttributeValues={":t": str_attr(tenant)},
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
                ExpressionAttributeValues={":n": str_attr(name), ":v": str_attr(VERSION_PREFIX)},
                ConsistentRead=True,
                Limit=1,
            )
            if found.get("Items"):
                return False
            done = try_conditional(
                self._db.delete_item,
                TableName=self._table,
                Key={"name": str_attr(name), "sk": str_attr(META)},
                ConditionExpression="tenant = :t",
                ExpressionAttributeValues={":t": str_attr(tenant)},
            )
        return done is not None

    def owner(self, name: str) -> str | None:
        with translate_errors("get model owner"):
            item = self._db.get_item(
                TableName=self._table,
                Key={"name": str_attr(name), "sk": str_attr(META)},
                ConsistentRead=True,
            ).get("Item")
        return read_str(item, "tenant") if item else None

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
                Key={"name": str_attr(name), "sk": str_attr(version_sk(version))},
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
                    ExpressionAttributeValues={
                        ":n": str_attr(name),
                        ":p": str_attr(VERSION_PREFIX),
                    },
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
            Key={"name": str_attr(rec.name), "sk": str_attr(version_sk(rec.version))},
            UpdateExpression=(
                "SET #st = :ready, platform = :p, backend = :b, max_batch_size = :m, "
                "inputs = :i, outputs = :o, config = :c"
            ),
            ConditionExpression="#st = :uploading",
            ExpressionAttributeNames={"#st": "state"},
            ExpressionAttributeValues={
                ":ready": str_attr("READY"),
                ":uploading": str_attr("UPLOADING"),
                ":p": str_attr(rec.platform or ""),
                ":b": str_attr(rec.backend or ""),
                ":m": num_attr(rec.max_batch_size),
                ":i": json_attr(rec.inputs),
                ":o": json_attr(rec.outputs),
                ":c": json_attr(rec.config),
            },
        )
        return done is not None

    def delete_version(self, name: str, version: str) -> bool:
        """Remove a version; False when it does not exist."""
        done = conditional_write(
            "delete model version",
            self._db.delete_item,
            TableName=self._table,
            Key={"name": str_attr(name), "sk": str_attr(version_sk(version))},
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
                ExpressionAttributeValues={":m": str_attr(META)},
            )
            out = [(str(read_str(it, "name")), str(read_str(it, "tenant"))) for it in items]
        return sorted(out)

    # ------------------------------------------------------------------ deployments
    def put_deployment(self, name: str, spec: dict[str, Any], now: float) -> None:
        """Store (replace) the deployment spec of ``name``."""
        with translate_errors("put deployment"):
            self._db.put_item(
                TableName=self._table,
                Item={
                    "name": str_attr(name),
                    "sk": str_attr(DEPLOYMENT),
                    "spec": json_attr(spec),
                    "updated_at": num_attr(now),
                },
            )

    def get_deployment(self, name: str) -> dict[str, Any] | None:
        with translate_errors("get deployment"):
            item = self._db.get_item(
                TableName=self._table,
                Key={"name": str_attr(name), "sk": str_attr(DEPLOYMENT)},
                ConsistentRead=True,
            ).get("Item")
        return read_json(item, "spec") if item else None

    def list_deployments(self) -> dict[str, dict[str, Any]]:
        """name -> spec of every deployment (a Scan of the small models table)."""
        with translate_errors("list deployments"):
            items = paginate(
                self._db,
                "scan",
                TableName=self._table,
                FilterExpression="sk = :d",
                ExpressionAttributeValues={":d": str_attr(DEPLOYMENT)},
                ConsistentRead=True,
            )
            return {str(read_str(it, "name")): read_json(it, "spec") or {} for it in items}

    def get_plan(self) -> PlanRecord | None:
        with translate_errors("get placement"):
            item = self._db.get_item(
                TableName=self._table,
                Key={"name": str_attr(PLAN_NAME), "sk": str_attr(PLAN_SK)},
                ConsistentRead=True,
            ).get("Item")
        if not item:
            return None
        return PlanRecord(
            revision=read_int(item, "revision"),
            planned_at=float(read_num(item, "planned_at") or 0.0),
            doc=read_json(item, "doc") or {},
        )

    def save_plan(self, doc: dict[str, Any], planned_at: float, expected_revision: int) -> bool:
        """Write the decision as ``expected_revision + 1``; False when another writer won."""
        condition = "attribute_not_exists(sk)" if expected_revision == 0 else "revision = :expected"
        values = {":expected": num_attr(expected_revision)} if expected_revision else None
        kwargs: dict[str, Any] = {
            "TableName": self._table,
            "Item": {
                "name": str_attr(PLAN_NAME),
                "sk": str_attr(PLAN_SK),
                "revision": num_attr(expected_revision + 1),
                "planned_at": num_attr(planned_at),
                "doc": json_attr(doc),
            },
            "ConditionExpression": condition,
        }
        if values:
            kwargs["ExpressionAttributeValues"] = values
        return conditional_write("save placement", self._db.put_item, **kwargs) is not None
