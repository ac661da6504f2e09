"""DynamoDB adapters of webhook deliveries (table ``webhooks``) and signing secrets (``auth``).

``webhooks`` (PK ``job_id``, SK ``sk``, TTL ``expires_at``) holds three kinds of item:

- ``<job_id>`` / ``d#<event>``             a delivery: msg_id, tenant, url, body, state,
                                           attempts, next_at, index_shard, index_sk, claim.
- ``<job_id>`` / ``a#<event>#<attempt>``   one attempt of the delivery log.
- ``pending#<n>`` / ``<due_ms>#<job_id>#<event>``   the due index: one entry per live
                                           delivery, so a worker reads only what is due.

Timeline of one attempt (every step one transaction, conditions in brackets)::

    enqueue   put d#  [d# absent]            + put index(due)
    claim     update d#: sending, attempts+1, claim=T, index_sk=lease
              [index_sk = seen entry AND attempts = seen]
              + delete index(seen) [exists]  + put index(lease)
    finish    update d#: state, index_sk=next|absent, claim absent  [claim = T]
              + delete index(lease)          + put index(next)?      + put a#<n>

``auth`` gets ``whsec#<tenant>`` items: current, previous, previous_until, version.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from control_plane.services.webhook_records import (
    AttemptRecord,
    Claim,
    Delivery,
    DueRef,
    SecretRecord,
)
from control_plane.storage.aws import conditional_write, translate_errors
from control_plane.storage.dynamo_items import (
    num_attr,
    str_attr,
)

__all__ = ["LOG_TTL_S", "SECRET_PREFIX", "DynamoWebhookSecretStore", "DynamoWebhookStore"]

LOG_TTL_S = 30 * 86_400
SECRET_PREFIX = "whsec#"  # noqa: S105 - a key prefix, not a secret
_INDEX = "pending#"


def _ms(t: float) -> str:
    return f"{int(t * 1000):013d}"


def index_sk(due_at: float, job_id: str, event: str) -> str:
    """Sort key of an index entry: due time first, so a range query finds what is due."""
    return f"{_ms(due_at)}#{job_id}#{event}"


def _str(item: dict[str, Any], name: str) -> str | None:
    v = item.get(name)
    return None if v is None else str(v["S"])


def _num(item: dict[str, Any], name: str) -> float | None:
    v = item.get(name)
    return None if v is None else float(v["N"])


def _delivery(item: dict[str, Any]) -> Delivery:
    return Delivery(
        job_id=item["job_id"]["S"],
        event=item["sk"]["S"][2:],
        msg_id=item["msg_id"]["S"],
        tenant=item["tenant"]["S"],
        url=item["url"]["S"],
        body=item["body"]["S"],
        state=item["state"]["S"],
        attempts=int(item["attempts"]["N"]),
        created_at=float(item["created_at"]["N"]),
        next_attempt_at=_num(item, "next_at"),
        index_shard=int(item["index_shard"]["N"]),
        index_sk=_str(item, "index_sk"),
        claim=_str(item, "claim"),
    )


def _attempt(item: dict[str, Any]) -> AttemptRecord:
    code = _num(item, "status_code")
    return AttemptRecord(
        job_id=item["job_id"]["S"],
        event=item["event"]["S"],
        msg_id=item["msg_id"]["S"],
        attempt=int(item["attempt"]["N"]),
        at=float(item["at"]["N"]),
        duration_ms=int(item["duration_ms"]["N"]),
        status_code=None if code is None else int(code),
        error=_str(item, "error"),
    )


class DynamoWebhookStore:
    """``WebhookStore`` on the ``webhooks`` table; every state change is a conditional write."""

    def __init__(self, dynamodb: Any, table: str) -> None:
        self._db = dynamodb
        self._table = table

    def _index_key(self, shard: int, sk: str) -> dict[str, Any]:
        return {"job_id": str_attr(f"{_INDEX}{shard}"), "sk": str_attr(sk)}

    def _transact(self, items: list[dict[str, Any]], what: str) -> bool:
        return (
            conditional_write(what, self._db.transact_write_items, TransactItems=items) is not None
        )

    def enqueue(self, delivery: Delivery, due_at: float) -> bool:
        d = delivery
        sk = index_sk(due_at, d.job_id, d.event)
        item = {
            "job_id": str_attr(d.job_id),
            "sk": str_attr(f"d#{d.event}"),
            "msg_id": str_attr(d.msg_id),
            "tenant": str_attr(d.tenant),
            "url": str_attr(d.url),
            "body": str_attr(d.body),
            "state": str_attr("pending"),
            "attempts": num_attr(0),
            "created_at": num_attr(d.created_at),
            "next_at": num_attr(due_at),
            "index_shard": num_attr(d.index_shard),
            "index_sk": str_attr(sk),
            "expires_at": num_attr(int(d.created_at) + LOG_TTL_S),
        }
        entry = {**self._index_key(d.index_shard, sk), "created_at": num_attr(d.created_at)}
        return self._transact(
            [
                {
                    "Put": {
                        "TableName": self._table,
                        "Item": item,
                        "ConditionExpression": "attribute_not_exists(sk)",
                    }
                },
                {"Put": {"TableName": self._table, "Item": entry}},
            ],
            "enqueue webhook",
        )

    def due(self, shard: int, now: float, limit: int) -> list[DueRef]:
        with translate_errors("list due webhooks"):
            resp = self._db.query(
                TableName=self._table,
                KeyConditionExpression="job_id = :p AND sk < :hi",
                ExpressionAttributeValues={
                    ":p": str_attr(f"{_INDEX}{shard}"),
                    ":hi": str_attr(_ms(now + 0.001)),
                },
                Limit=limit,
                ConsistentRead=True,
            )
        refs = []
        for item in resp.get("Items", []):
            sk = item["sk"]["S"]
            _, job_id, event = sk.split("#", 2)
            refs.append(DueRef(job_id=job_id, event=event, shard=shard, sk=sk))
        return refs

    def get(self, job_id: str, event: str) -> Delivery | None:
        with translate_errors("read webhook delivery"):
            item = self._db.get_item(
                TableName=self._table,
                Key={"job_id": str_attr(job_id), "sk": str_attr(f"d#{event}")},
                ConsistentRead=True,
            ).get("Item")
        return _delivery(item) if item else None

    def claim(self, ref: DueRef, seen: Delivery, token: str, lease_until: float) -> Claim | None:
        lease_sk = index_sk(lease_until, ref.job_id, ref.event)
        ok = self._transact(
            [
                {
                    "Update": {
                        "TableName": self._table,
                        "Key": {"job_id": str_attr(ref.job_id), "sk": str_attr(f"d#{ref.event}")},
                        "UpdateExpression": "SET #st = :sending, attempts = :next, claim = :t, "
                        "index_sk = :lease, next_at = :until",
                        "ConditionExpression": "index_sk = :seen AND attempts = :n",
                        "ExpressionAttributeNames": {"#st": "state"},
                        "ExpressionAttributeValues": {
                            ":sending": str_attr("sending"),
                            ":next": num_attr(seen.attempts + 1),
                            ":n": num_attr(seen.attempts),
                            ":t": str_attr(token),
                            ":lease": str_attr(lease_sk),
                            ":until": num_attr(lease_until),
                            ":seen": str_attr(ref.sk),
                        },
                    }
                },
                {
                    "Delete": {
                        "TableName": self._table,
                        "Key": self._index_key(ref.shard, ref.sk),
                        "ConditionExpression": "attribute_exists(sk)",
                    }
                },
                {"Put": {"TableName": self._table, "Item": self._index_key(ref.shard, lease_sk)}},
            ],
            "claim webhook delivery",
        )
        if not ok:
            return None
        claimed = dataclasses.replace(
            seen,
            state="sending",
            attempts=seen.attempts + 1,
            claim=token,
            index_sk=lease_sk,
            next_attempt_at=lease_until,
        )
        return Claim(delivery=claimed, token=token, lease_sk=lease_sk)

    def drop_stale(self, ref: DueRef) -> None:
        with translate_errors("drop stale webhook index entry"):
            self._db.delete_item(TableName=self._table, Key=self._index_key(ref.shard, ref.sk))

    def finish(
        self, claim: Claim, attempt: AttemptRecord, state: str, next_at: float | None
    ) -> bool:
        d = claim.delivery
        key = {"job_id": str_attr(d.job_id), "sk": str_attr(f"d#{d.event}")}
        values: dict[str, Any] = {":st": str_attr(state), ":t": str_attr(claim.token)}
        items: list[dict[str, Any]] = []
        if next_at is None:
            update = "SET #st = :st REMOVE claim, index_sk, next_at"
        else:
            nxt = index_sk(next_at, d.job_id, d.event)
            update = "SET #st = :st, index_sk = :nxt, next_at = :at REMOVE claim"
            values.update({":nxt": str_attr(nxt), ":at": num_attr(next_at)})
            items.append(
                {"Put": {"TableName": self._table, "Item": self._index_key(d.index_shard, nxt)}}
            )
        log = {
            "job_id": str_attr(d.job_id),
            "sk": str_attr(f"a#{d.event}#{attempt.attempt:04d}"),
            "event": str_attr(d.event),
            "msg_id": str_attr(d.msg_id),
            "attempt": num_attr(attempt.attempt),
            "at": num_attr(attempt.at),
            "duration_ms": num_attr(attempt.duration_ms),
            "expires_at": num_attr(int(d.created_at) + LOG_TTL_S),
        }
        if attempt.status_code is not None:
            log["status_code"] = num_attr(attempt.status_code)
        if attempt.error is not None:
            log["error"] = str_attr(attempt.error[:1000])
        items = [
            {
                "Update": {
                    "TableName": self._table,
                    "Key": key,
                    "UpdateExpression": update,
                    "ConditionExpression": "claim = :t",
                    "ExpressionAttributeNames": {"#st": "state"},
                    "ExpressionAttributeValues": values,
                }
            },
            {
                "Delete": {
                    "TableName": self._table,
                    "Key": self._index_key(d.index_shard, claim.lease_sk),
                }
            },
            {"Put": {"TableName": self._table, "Item": log}},
            *items,
        ]
        return self._transact(items, "record webhook attempt")

    def _query(self, job_id: str, prefix: str, what: str) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        kwargs: dict[str, Any] = {
            "TableName": self._table,
            "KeyConditionExpression": "job_id = :j AND begins_with(sk, :p)",
            "ExpressionAttributeValues": {":j": str_attr(job_id), ":p": str_attr(prefix)},
            "ConsistentRead": True,
        }
        with translate_errors(what):
            while True:
                resp = self._db.query(**kwargs)
                items.extend(resp.get("Items", []))
                if "LastEvaluatedKey" not in resp:
                    return items
                kwargs["ExclusiveStartKey"] = resp["LastEvaluatedKey"]

    def deliveries(self, job_id: str) -> list[Delivery]:
        return [_delivery(i) for i in self._query(job_id, "d#", "list webhook deliveries")]

    def attempts(self, job_id: str) -> list[AttemptRecord]:
        return [_attempt(i) for i in self._query(job_id, "a#", "list webhook attempts")]

    def ping(self) -> None:
        with translate_errors("webhooks table"):
            self._db.describe_table(TableName=self._table)


class DynamoWebhookSecretStore:
    """``SecretStore`` on the ``auth`` table (items ``whsec#<tenant>``)."""

    def __init__(self, dynamodb: Any, table: str) -> None:
        self._db = dynamodb
        self._table = table

    @staticmethod
    def _item(rec: SecretRecord) -> dict[str, Any]:
        item = {
            "pk": str_attr(f"{SECRET_PREFIX}{rec.tenant}"),
            "current": str_attr(rec.current),
            "version": num_attr(rec.version),
            "created_at": num_attr(rec.created_at),
        }
        if rec.previous is not None and rec.previous_until is not None:
            item["previous"] = str_attr(rec.previous)
            item["previous_until"] = num_attr(rec.previous_until)
        return item

    def get(self, tenant: str) -> SecretRecord | None:
        with translate_errors("read webhook secret"):
            item = self._db.get_item(
                TableName=self._table,
                Key={"pk": str_attr(f"{SECRET_PREFIX}{tenant}")},
                ConsistentRead=True,
            ).get("Item")
        if not item:
            return None
        return SecretRecord(
            tenant=tenant,
            current=item["current"]["S"],
            version=int(item["version"]["N"]),
            created_at=float(item["created_at"]["N"]),
            previous=_str(item, "previous"),
            previous_until=_num(item, "previous_until"),
        )

    def _put(self, rec: SecretRecord, condition: str, values: dict[str, Any] | None) -> bool:
        kwargs: dict[str, Any] = {
            "TableName": self._table,
            "Item": self._item(rec),
            "ConditionExpression": condition,
        }
        if values:
            kwargs["ExpressionAttributeValues"] = values
        return conditional_write("store webhook secret", self._db.put_item, **kwargs) is not None

    def create(self, record: SecretRecord) -> bool:
        return self._put(record, "attribute_not_exists(pk)", None)

    def replace(self, record: SecretRecord, expected_version: int) -> bool:
        return self._put(record, "version = :v", {":v": num_attr(expected_version)})
