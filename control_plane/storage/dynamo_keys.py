"""DynamoDB adapter of the signing-key store, on the ``auth`` table (PK ``pk``).

Items:
- ``sigkey#<kid>``    a key: alg, private_pem, public_jwk (JSON), created_at, retired_at.
- ``sigkey@current``  the current key's kid (``kid``).

Creating or rotating is one transaction: the ``sigkey@current`` pointer is written on the
condition that it is absent (first key) or names ``replaces``; the old key gets
``retired_at``; the new key is put on the condition that its kid is new.
"""

from __future__ import annotations

import json
from typing import Any

from botocore.exceptions import ClientError

from control_plane.storage.aws import error_code, translate_errors
from control_plane.storage.protocols_keys import SigningKeyRecord

PREFIX = "sigkey#"
CURRENT = "sigkey@current"


def _s(v: str) -> dict[str, str]:
    return {"S": v}


def _n(v: float) -> dict[str, str]:
    return {"N": repr(float(v))}


def _lost_race(exc: ClientError) -> bool:
    if error_code(exc) != "TransactionCanceledException":
        return False
    reasons = exc.response.get("CancellationReasons") or []
    codes = {r.get("Code") for r in reasons} - {"None", None}
    return not reasons or codes <= {"ConditionalCheckFailed"}


class DynamoSigningKeyStore:
    """``SigningKeyStore`` on DynamoDB; creation and rotation are transactions."""

    def __init__(self, dynamodb: Any, table: str) -> None:
        self._db = dynamodb
        self._table = table

    def list_signing_keys(self) -> list[SigningKeyRecord]:
        items: list[dict[str, Any]] = []
        kwargs: dict[str, Any] = {
            "TableName": self._table,
            "FilterExpression": "begins_with(pk, :p)",
            "ExpressionAttributeValues": {":p": _s(PREFIX)},
            "ConsistentRead": True,
        }
        with translate_errors("list signing keys"):
            while True:
                page = self._db.scan(**kwargs)
                items.extend(page.get("Items", []))
                if not page.get("LastEvaluatedKey"):
                    break
                kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]
        recs = [
            SigningKeyRecord(
                kid=i["pk"]["S"][len(PREFIX) :],
                alg=i["alg"]["S"],
                private_pem=i["private_pem"]["S"],
                public_jwk=json.loads(i["public_jwk"]["S"]),
                created_at=float(i["created_at"]["N"]),
                retired_at=float(i["retired_at"]["N"]) if "retired_at" in i else None,
            )
            for i in items
        ]
        return sorted(recs, key=lambda r: (r.created_at, r.kid))

    def add_signing_key(self, rec: SigningKeyRecord, replaces: str | None, at: float) -> bool:
        pointer: dict[str, Any] = {
            "TableName": self._table,
            "Item": {"pk": _s(CURRENT), "kid": _s(rec.kid)},
        }
        if replaces is None:
            pointer["ConditionExpression"] = "attribute_not_exists(pk)"
        else:
            pointer["ConditionExpression"] = "kid = :old"
            pointer["ExpressionAttributeValues"] = {":old": _s(replaces)}
        items: list[dict[str, Any]] = [
            {"Put": pointer},
            {
                "Put": {
                    "TableName": self._table,
                    "Item": {
                        "pk": _s(PREFIX + rec.kid),
                        "alg": _s(rec.alg),
                        "private_pem": _s(rec.private_pem),
                        "public_jwk": _s(json.dumps(rec.public_jwk)),
                        "created_at": _n(rec.created_at),
                    },
                    "ConditionExpression": "attribute_not_exists(pk)",
                }
            },
        ]
        if replaces is not None:
            items.append(
                {
                    "Update": {
                        "TableName": self._table,
                        "Key": {"pk": _s(PREFIX + replaces)},
                        "UpdateExpression": "SET retired_at = :at",
                        "ConditionExpression": "attribute_exists(pk)",
                        "ExpressionAttributeValues": {":at": _n(at)},
                    }
                }
            )
        with translate_errors("add signing key"):
            try:
                self._db.transact_write_items(TransactItems=items)
            except ClientError as exc:
                if _lost_race(exc):
                    return False
                raise
        return True

    def delete_signing_key(self, kid: str) -> bool:
        with translate_errors("delete signing key"):
            try:
                self._db.delete_item(
                    TableName=self._table,
                    Key={"pk": _s(PREFIX + kid)},
                    ConditionExpression="attribute_exists(retired_at)",
                )
            except ClientError as exc:
                if error_code(exc) == "ConditionalCheckFailedException":
                    return False
                raise
        return True
