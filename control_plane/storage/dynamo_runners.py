"""DynamoDB adapters of the ``runners`` table (PK ``id``) and the ``nonces`` table (PK ``pk``).

A runner item holds its registration, its HMAC secret in the clear (the control plane must
recompute signatures; protect the table with encryption at rest and tight IAM), the last
heartbeat (gpus, models, triton, running_jobs as JSON strings) and its runtime ``config`` as a
map, so that a config patch sets single fields atomically.
"""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

from control_plane.errors import Conflict
from control_plane.storage.aws import conditional_write, translate_errors
from control_plane.storage.protocols_auth import RunnerRecord


def _value(v: Any) -> dict[str, Any]:
    if isinstance(v, bool):
        return {"BOOL": v}
    if isinstance(v, (int, float)):
        return {"N": str(Decimal(str(v)))}
    return {"S": str(v)}


def _plain(v: dict[str, Any]) -> Any:
    if "BOOL" in v:
        return v["BOOL"]
    if "N" in v:
        d = Decimal(v["N"])
        return int(d) if d == d.to_integral_value() and "." not in v["N"] else float(d)
    return v.get("S")


def _record(item: dict[str, Any]) -> RunnerRecord:
    last = item.get("last_heartbeat_at")
    return RunnerRecord(
        id=item["id"]["S"],
        name=item["name"]["S"],
        region=item["region"]["S"],
        labels=json.loads(item["labels"]["S"]),
        secret=item["secret"]["S"],
        registered_at=float(item["registered_at"]["N"]),
        revoked=item["revoked"]["BOOL"],
        last_heartbeat_at=float(last["N"]) if last else None,
        gpus=json.loads(item.get("gpus", {"S": "[]"})["S"]),
        models=json.loads(item.get("models", {"S": "[]"})["S"]),
        triton=json.loads(item.get("triton", {"S": "{}"})["S"]),
        running_jobs=json.loads(item.get("running_jobs", {"S": "[]"})["S"]),
        config={k: _plain(v) for k, v in item.get("config", {"M": {}})["M"].items()},
        pending_secret=item["pending_secret"]["S"] if "pending_secret" in item else None,
        previous_secret=item["previous_secret"]["S"] if "previous_secret" in item else None,
        previous_valid_until=_number(item.get("previous_valid_until")),
        secret_set_at=_number(item.get("secret_set_at")),
        join_token=item["join_token"]["S"] if "join_token" in item else None,
    )


def _number(v: dict[str, Any] | None) -> float | None:
    return None if v is None else float(v["N"])


class DynamoRunnerStore:
    """``RunnerStore`` on DynamoDB; every state change is a conditional write."""

    def __init__(self, dynamodb: Any, table: str) -> None:
        self._db = dynamodb
        self._table = table

    def create_runner(self, rec: RunnerRecord) -> None:
        item = {
            "id": {"S": rec.id},
            "name": {"S": rec.name},
            "region": {"S": rec.region},
            "labels": {"S": json.dumps(rec.labels)},
            "secret": {"S": rec.secret},
            "registered_at": _value(rec.registered_at),
            "revoked": {"BOOL": False},
            "gpus": {"S": json.dumps(rec.gpus)},
            "models": {"S": json.dumps(rec.models)},
            "triton": {"S": json.dumps(rec.triton)},
            "running_jobs": {"S": json.dumps(rec.running_jobs)},
            "config": {"M": {k: _value(v) for k, v in rec.config.items()}},
        }
        if rec.secret_set_at is not None:
            item["secret_set_at"] = _value(rec.secret_set_at)
        if rec.join_token is not None:
            item["join_token"] = {"S": rec.join_token}
        created = conditional_write(
            "create runner",
            self._db.put_item,
            TableName=self._table,
            Item=item,
            ConditionExpression="attribute_not_exists(id)",
        )
        if created is None:
            raise Conflict("runner id already exists")

    def find_runner(self, runner_id: str) -> RunnerRecord | None:
        with translate_errors("find runner"):
            item = self._db.get_item(
                TableName=self._table, Key={"id": {"S": runner_id}}, ConsistentRead=True
            ).get("Item")
        return _record(item) if item else None

    def _update(
        self,
        runner_id: str,
        expr: str,
        names: dict[str, str],
        values: dict[str, Any],
        what: str,
        condition: str = "",
    ) -> RunnerRecord | None:
        """Update an existing, unrevoked runner (and ``condition``); None when it is missing
        or revoked (or ``condition`` fails)."""
        kwargs: dict[str, Any] = {
            "TableName": self._table,
            "Key": {"id": {"S": runner_id}},
            "UpdateExpression": expr,
            "ConditionExpression": "attribute_exists(id) AND revoked = :false"
            + (f" AND {condition}" if condition else ""),
            "ExpressionAttributeValues": {**values, ":false": {"BOOL": False}},
            "ReturnValues": "ALL_NEW",
        }
        if names:
            kwargs["ExpressionAttributeNames"] = names
        out = conditional_write(what, self._db.update_item, **kwargs)
        return None if out is None else _record(out["Attributes"])

    def record_heartbeat(
        self,
        runner_id: str,
        at: float,
        gpus: list[dict[str, Any]],
        models: list[dict[str, Any]],
        triton: dict[str, Any],
        running_jobs: list[str],
    ) -> RunnerRecord | None:
        """Store the heartbeat unless the runner is revoked (None then)."""
        return self._update(
            runner_id,
            "SET last_heartbeat_at = :at, gpus = :g, models = :m, triton = :t, running_jobs = :r",
            {},
            {
                ":at": _value(at),
                ":g": {"S": json.dumps(gpus)},
                ":m": {"S": json.dumps(models)},
                ":t": {"S": json.dumps(triton)},
                ":r": {"S": json.dumps(running_jobs)},
            },
            "record heartbeat",
        )

    def merge_config(self, runner_id: str, patch: dict[str, Any]) -> RunnerRecord | None:
        """Set the given config fields (others kept) in one conditional update."""
        if not patch:
            return self.find_runner(runner_id)
        names = {"#c": "config"}
        values: dict[str, Any] = {}
        sets = []
        for i, (k, v) in enumerate(sorted(patch.items())):
            names[f"#f{i}"] = k
            values[f":v{i}"] = _value(v)
            sets.append(f"#c.#f{i} = :v{i}")
        return self._update(runner_id, "SET " + ", ".join(sets), names, values, "merge config")

    def offer_secret(self, runner_id: str, secret: str) -> RunnerRecord | None:
        rec = self._update(
            runner_id,
            "SET pending_secret = :s",
            {},
            {":s": {"S": secret}},
            "offer runner secret",
            condition="attribute_not_exists(pending_secret)",
        )
        if rec is not None:
            return rec
        found = self.find_runner(runner_id)  # one pending already (or missing, revoked)
        return found if found is not None and not found.revoked else None

    def promote_secret(
        self, runner_id: str, pending: str, at: float, previous_valid_until: float
    ) -> RunnerRecord | None:
        return self._update(
            runner_id,
            "SET previous_secret = secret, previous_valid_until = :u, secret = :p, "
            "secret_set_at = :at REMOVE pending_secret",
            {},
            {":p": {"S": pending}, ":u": _value(previous_valid_until), ":at": _value(at)},
            "promote runner secret",
            condition="pending_secret = :p",
        )

    def revoke_runner(self, runner_id: str) -> bool:
        """Mark revoked (idempotent); False when no such runner."""
        done = conditional_write(
            "revoke runner",
            self._db.update_item,
            TableName=self._table,
            Key={"id": {"S": runner_id}},
            UpdateExpression="SET revoked = :t",
            ConditionExpression="attribute_exists(id)",
            ExpressionAttributeValues={":t": {"BOOL": True}},
        )
        return done is not None

    def list_runners(self) -> list[RunnerRecord]:
        out: list[RunnerRecord] = []
        kwargs: dict[str, Any] = {"TableName": self._table}
        with translate_errors("list runners"):
            while True:
                page = self._db.scan(**kwargs)
                out.extend(_record(i) for i in page.get("Items", []))
                if "LastEvaluatedKey" not in page:
                    break
                kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]
        out.sort(key=lambda r: r.registered_at)
        return out

    def ping(self) -> None:
        with translate_errors("ping runners table"):
            self._db.describe_table(TableName=self._table)


class DynamoNonceStore:
    """``NonceStore`` on the ``nonces`` table: a nonce may be stored once until it expires."""

    def __init__(self, dynamodb: Any, table: str) -> None:
        self._db = dynamodb
        self._table = table

    def remember_nonce(self, key: str, now: float, expires_at: float) -> bool:
        """True when the nonce is new (or its old entry expired); False on a replay."""
        # TTL deletes lag by up to days, hence the explicit expiry check in the condition.
        done = conditional_write(
            "remember nonce",
            self._db.put_item,
            TableName=self._table,
            Item={"pk": {"S": key}, "expires_at": _value(int(expires_at))},
            ConditionExpression="attribute_not_exists(pk) OR expires_at < :now",
            ExpressionAttributeValues={":now": _value(int(now))},
        )
        return done is not None

    def ping(self) -> None:
        with translate_errors("ping nonces table"):
            self._db.describe_table(TableName=self._table)
