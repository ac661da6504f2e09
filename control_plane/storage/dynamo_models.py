"""DynamoDB adapter of the ``models`` table (PK ``name``, SK ``sk``).

Items of one model name:
- ``meta``              the owning tenant (names are global; the first creator owns it)
- ``v#<version:09d>``   one version: state, files, multipart upload ids, parsed config
- ``depth#<n>``         queue-depth counters (written by ``dynamo_queue``)
- ``deployment``        the desired placement (another issue)
"""

from __future__ import annotations

from typing import Any

from botocore.exceptions import ClientError

from control_plane.storage.aws import translate_errors
from control_plane.storage.dynamo_items import (
    conditional_failed,
    get_i,
    get_j,
    get_n,
    get_s,
    j,
    n,
    paginate,
    s,
)
from control_plane.storage.protocols import ModelVersionRecord

META = "meta"
VERSION_PREFIX = "v#"


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
        with translate_errors("claim model name"):
            try:
                self._db.put_item(
                    TableName=self._table,
                    Item={
                        "name": s(name),
                        "sk": s(META),
                        "tenant": s(tenant),
                        "created_at": n(now),
                    },
                    ConditionExpression="attribute_not_exists(sk) OR tenant = :t",
                    ExpressionAttributeValues={":t": s(tenant)},
                )
                return tenant
            except ClientError as exc:
                if not conditional_failed(exc):
                    raise
        return self.owner(name) or tenant

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
        with translate_errors("create model version"):
            try:
                self._db.put_item(
                    TableName=self._table,
                    Item=_to_item(rec),
                    ConditionExpression="attribute_not_exists(sk)",
                )
            except ClientError as exc:
                if conditional_failed(exc):
                    return False
                raise
        return True

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
        with translate_errors("commit model version"):
            try:
                self._db.update_item(
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
            except ClientError as exc:
                if conditional_failed(exc):
                    return False
                raise
        return True

    def delete_version(self, name: str, version: str) -> bool:
        """Remove a version; False when it does not exist."""
        with translate_errors("delete model version"):
            try:
                self._db.delete_item(
                    TableName=self._table,
                    Key={"name": s(name), "sk": s(version_sk(version))},
                    ConditionExpression="attribute_exists(sk)",
                )
            except ClientError as exc:
                if conditional_failed(exc):
                    return False
                raise
        return True

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
