"""DynamoDB adapter of the signing-key store: one item of the ``auth`` table (PK ``pk``).

Item ``sigkeys``: ``current`` (the current key's kid) and ``keys``, a map kid -> {alg,
private_pem, public_jwk (JSON), created_at, retired_at?}. One strongly consistent GetItem
reads every key (no Scan of the auth table, which holds every refresh token); a handful of
keys is far below the item size limit (old keys are deleted after their overlap window).

- first key: PutItem on the condition that the item does not exist;
- rotation: one UpdateItem that adds the new key, sets ``retired_at`` on the old one and
  points ``current`` at the new one, on the condition that ``current`` is the old kid and the
  new kid is absent;
- deletion: REMOVE of a key that exists and is not ``current``.
"""

from __future__ import annotations

import json
from typing import Any

from control_plane.storage.aws import conditional_write, translate_errors
from control_plane.storage.dynamo_items import (
    num_attr,
    str_attr,
)
from control_plane.storage.protocols_keys import SigningKeyRecord

PK = "sigkeys"


def _key_item(rec: SigningKeyRecord) -> dict[str, Any]:
    return {
        "M": {
            "alg": str_attr(rec.alg),
            "private_pem": str_attr(rec.private_pem),
            "public_jwk": str_attr(json.dumps(rec.public_jwk)),
            "created_at": num_attr(rec.created_at),
        }
    }


class DynamoSigningKeyStore:
    """``SigningKeyStore`` on DynamoDB; every change is one conditional write."""

    def __init__(self, dynamodb: Any, table: str) -> None:
        self._db = dynamodb
        self._table = table

    def _write(self, what: str, **kwargs: Any) -> bool:
        kwargs["TableName"] = self._table
        if "Item" in kwargs:
            return conditional_write(what, self._db.put_item, **kwargs) is not None
        return (
            conditional_write(what, self._db.update_item, Key={"pk": str_attr(PK)}, **kwargs)
            is not None
        )

    def list_signing_keys(self) -> list[SigningKeyRecord]:
        with translate_errors("list signing keys"):
            item = self._db.get_item(
                TableName=self._table, Key={"pk": str_attr(PK)}, ConsistentRead=True
            ).get("Item")
        if not item:
            return []
        recs = []
        for kid, value in item.get("keys", {}).get("M", {}).items():
            k = value["M"]
            recs.append(
                SigningKeyRecord(
                    kid=kid,
                    alg=k["alg"]["S"],
                    private_pem=k["private_pem"]["S"],
                    public_jwk=json.loads(k["public_jwk"]["S"]),
                    created_at=float(k["created_at"]["N"]),
                    retired_at=float(k["retired_at"]["N"]) if "retired_at" in k else None,
                )
            )
        return sorted(recs, key=lambda r: (r.created_at, r.kid))

    def add_signing_key(self, rec: SigningKeyRecord, replaces: str | None, at: float) -> bool:
        if replaces is None:
            return self._write(
                "add signing key",
                Item={
                    "pk": str_attr(PK),
                    "current": str_attr(rec.kid),
                    "keys": {"M": {rec.kid: _key_item(rec)}},
                },
                ConditionExpression="attribute_not_exists(pk)",
            )
        if replaces == rec.kid:
            return False
        return self._write(
            "rotate signing key",
            UpdateExpression="SET #k.#new = :rec, #k.#old.retired_at = :at, #c = :new",
            ConditionExpression="#c = :old AND attribute_not_exists(#k.#new)",
            ExpressionAttributeNames={
                "#k": "keys",
                "#c": "current",
                "#new": rec.kid,
                "#old": replaces,
            },
            ExpressionAttributeValues={
                ":rec": _key_item(rec),
                ":at": num_attr(at),
                ":new": str_attr(rec.kid),
                ":old": str_attr(replaces),
            },
        )

    def delete_signing_key(self, kid: str) -> bool:
        return self._write(
            "delete signing key",
            UpdateExpression="REMOVE #k.#kid",
            ConditionExpression="attribute_exists(#k.#kid) AND #c <> :kid",
            ExpressionAttributeNames={"#k": "keys", "#c": "current", "#kid": kid},
            ExpressionAttributeValues={":kid": str_attr(kid)},
        )
