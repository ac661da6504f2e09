"""DynamoDB adapter of the ``auth`` table (PK ``pk``).

Items:
- ``key#<id>``     API key: tenant, role, name, secret_hash (sha256 hex), revoked, created_at;
                   after a rotation previous_secret_hash, previous_valid_until.
- ``rt#<id>``      refresh token: secret_hash, family, key_id, tenant, role, used, expires_at (TTL).
- ``fam#<id>``     a revoked refresh-token family (present = revoked), expires_at (TTL).
- ``join#<hash>``  join token: region, labels (JSON), expires_at (TTL), max_uses, uses,
                   last_used_at (tokens stored before use limits lack max_uses: no limit).
- ``meta#jwt``     the generated HS256 signing key shared by every replica.
"""

from __future__ import annotations

import json
from typing import Any

from control_plane.errors import Conflict
from control_plane.storage.aws import conditional_write, translate_errors
from control_plane.storage.dynamo_items import (
    bool_attr,
    num_attr,
    str_attr,
)
from control_plane.storage.protocols_auth import ApiKeyRecord, JoinTokenRecord, RefreshRecord

_NOT_EXISTS = "attribute_not_exists(pk)"


def _api_key(key_id: str, item: dict[str, Any]) -> ApiKeyRecord:
    return ApiKeyRecord(
        id=key_id,
        tenant=item["tenant"]["S"],
        role=item["role"]["S"],
        name=item["name"]["S"],
        secret_hash=item["secret_hash"]["S"],
        created_at=float(item["created_at"]["N"]),
        revoked=item["revoked"]["BOOL"],
        previous_secret_hash=item["previous_secret_hash"]["S"]
        if "previous_secret_hash" in item
        else None,
        previous_valid_until=float(item["previous_valid_until"]["N"])
        if "previous_valid_until" in item
        else None,
    )


def _join(token_hash: str, item: dict[str, Any]) -> JoinTokenRecord:
    last = item.get("last_used_at")
    return JoinTokenRecord(
        token_hash=token_hash,
        region=item["region"]["S"],
        labels=json.loads(item["labels"]["S"]),
        expires_at=float(item["expires_at"]["N"]),
        max_uses=int(item["max_uses"]["N"]) if "max_uses" in item else 0,
        uses=int(item["uses"]["N"]) if "uses" in item else 0,
        last_used_at=float(last["N"]) if last else None,
    )


class DynamoAuthStore:
    """``AuthStore`` on DynamoDB; every state change is a conditional write."""

    def __init__(self, dynamodb: Any, table: str) -> None:
        self._db = dynamodb
        self._table = table

    # ------------------------------------------------------------------ helpers
    def _get(self, pk: str, what: str) -> dict[str, Any] | None:
        with translate_errors(what):
            item = self._db.get_item(
                TableName=self._table, Key={"pk": str_attr(pk)}, ConsistentRead=True
            ).get("Item")
        return item if item else None

    def _put_new(self, item: dict[str, Any], what: str) -> None:
        put = {"TableName": self._table, "Item": item, "ConditionExpression": _NOT_EXISTS}
        if conditional_write(what, self._db.put_item, **put) is None:
            raise Conflict(f"{what}: already exists")

    def _flag(self, pk: str, attr: str, what: str, *, require_false: bool) -> bool:
        """Set ``attr`` to true on an existing item; False when the condition fails."""
        cond = "attribute_exists(pk)"
        values: dict[str, Any] = {":t": bool_attr(True)}
        if require_false:
            cond += " AND #a = :f"
            values[":f"] = bool_attr(False)
        done = conditional_write(
            what,
            self._db.update_item,
            TableName=self._table,
            Key={"pk": str_attr(pk)},
            UpdateExpression="SET #a = :t",
            ConditionExpression=cond,
            ExpressionAttributeNames={"#a": attr},
            ExpressionAttributeValues=values,
        )
        return done is not None

    # ------------------------------------------------------------------ API keys
    def save_api_key(self, rec: ApiKeyRecord) -> None:
        """Store a new key (fails with Conflict if the id exists)."""
        self._put_new(
            {
                "pk": str_attr(f"key#{rec.id}"),
                "tenant": str_attr(rec.tenant),
                "role": str_attr(rec.role),
                "name": str_attr(rec.name),
                "secret_hash": str_attr(rec.secret_hash),
                "created_at": num_attr(rec.created_at),
                "revoked": bool_attr(rec.revoked),
            },
            "save api key",
        )

    def find_api_key(self, key_id: str) -> ApiKeyRecord | None:
        item = self._get(f"key#{key_id}", "find api key")
        return None if item is None else _api_key(key_id, item)

    def list_api_keys(self) -> list[ApiKeyRecord]:
        """A Scan of the auth table for ``key#`` items (an admin page's read, not a hot path:
        the table also holds refresh tokens, which the filter skips)."""
        keys: list[ApiKeyRecord] = []
        kwargs: dict[str, Any] = {
            "TableName": self._table,
            "FilterExpression": "begins_with(pk, :k)",
            "ExpressionAttributeValues": {":k": str_attr("key#")},
        }
        with translate_errors("list api keys"):
            while True:
                page = self._db.scan(**kwargs)
                for item in page.get("Items", []):
                    keys.append(_api_key(item["pk"]["S"][len("key#") :], item))
                if "LastEvaluatedKey" not in page:
                    break
                kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]
        return sorted(keys, key=lambda k: (k.created_at, k.id))

    def revoke_api_key(self, key_id: str) -> bool:
        """Mark a key revoked; False when no such key."""
        return self._flag(f"key#{key_id}", "revoked", "revoke api key", require_false=False)

    def rotate_api_key(
        self, key_id: str, expected_hash: str, new_hash: str, previous_valid_until: float
    ) -> bool:
        done = conditional_write(
            "rotate api key",
            self._db.update_item,
            TableName=self._table,
            Key={"pk": str_attr(f"key#{key_id}")},
            UpdateExpression="SET secret_hash = :new, previous_secret_hash = :old, "
            "previous_valid_until = :until",
            ConditionExpression="attribute_exists(pk) AND revoked = :f AND secret_hash = :old",
            ExpressionAttributeValues={
                ":new": str_attr(new_hash),
                ":old": str_attr(expected_hash),
                ":until": num_attr(previous_valid_until),
                ":f": bool_attr(False),
            },
        )
        return done is not None

    # ------------------------------------------------------------------ refresh tokens
    def save_refresh_token(self, rec: RefreshRecord) -> None:
        self._put_new(
            {
                "pk": str_attr(f"rt#{rec.id}"),
                "secret_hash": str_attr(rec.secret_hash),
                "family": str_attr(rec.family),
                "key_id": str_attr(rec.key_id),
                "tenant": str_attr(rec.tenant),
                "role": str_attr(rec.role),
                "used": bool_attr(rec.used),
                "expires_at": num_attr(rec.expires_at),
            },
            "save refresh token",
        )

    def find_refresh_token(self, token_id: str) -> RefreshRecord | None:
        item = self._get(f"rt#{token_id}", "find refresh token")
        if item is None:
            return None
        return RefreshRecord(
            id=token_id,
            secret_hash=item["secret_hash"]["S"],
            family=item["family"]["S"],
            key_id=item["key_id"]["S"],
            tenant=item["tenant"]["S"],
            role=item["role"]["S"],
            used=item["used"]["BOOL"],
            expires_at=float(item["expires_at"]["N"]),
        )

    def mark_refresh_used(self, token_id: str) -> bool:
        """used: false -> true. False when it was used already (a reuse)."""
        # Two presenters of one token race here: exactly one flips the flag.
        return self._flag(f"rt#{token_id}", "used", "rotate refresh token", require_false=True)

    def revoke_family(self, family: str, expires_at: float) -> None:
        with translate_errors("revoke token family"):
            self._db.put_item(
                TableName=self._table,
                Item={"pk": str_attr(f"fam#{family}"), "expires_at": num_attr(expires_at)},
            )

    def family_revoked(self, family: str) -> bool:
        return self._get(f"fam#{family}", "check token family") is not None

    # ------------------------------------------------------------------ join tokens
    def save_join_token(self, rec: JoinTokenRecord) -> None:
        self._put_new(
            {
                "pk": str_attr(f"join#{rec.token_hash}"),
                "region": str_attr(rec.region),
                "labels": str_attr(json.dumps(rec.labels)),
                "expires_at": num_attr(rec.expires_at),
                "max_uses": num_attr(rec.max_uses),
                "uses": num_attr(rec.uses),
            },
            "save join token",
        )

    def claim_join_token(self, token_hash: str, now: float) -> JoinTokenRecord | None:
        """One conditional update: unexpired, and uses left (or no ``max_uses``: no limit)."""
        out = conditional_write(
            "claim join token",
            self._db.update_item,
            TableName=self._table,
            Key={"pk": str_attr(f"join#{token_hash}")},
            UpdateExpression="SET uses = if_not_exists(uses, :zero) + :one, last_used_at = :now",
            ConditionExpression="attribute_exists(pk) AND expires_at >= :now AND "
            "(attribute_not_exists(max_uses) OR max_uses = :zero OR uses < max_uses)",
            ExpressionAttributeValues={
                ":zero": num_attr(0),
                ":one": num_attr(1),
                ":now": num_attr(now),
            },
            ReturnValues="ALL_NEW",
        )
        return None if out is None else _join(token_hash, out["Attributes"])

    def consume_join_token(self, token_hash: str) -> bool:
        """A conditional delete: of two consumers the second finds nothing to delete."""
        done = conditional_write(
            "consume join token",
            self._db.delete_item,
            TableName=self._table,
            Key={"pk": str_attr(f"join#{token_hash}")},
            ConditionExpression="attribute_exists(pk)",
        )
        return done is not None

    def find_join_token(self, token_hash: str) -> JoinTokenRecord | None:
        item = self._get(f"join#{token_hash}", "find join token")
        return None if item is None else _join(token_hash, item)

    def list_join_tokens(self) -> list[JoinTokenRecord]:
        """A Scan of the ``join#`` items (admin listing: rare, and tokens are few)."""
        out = [
            _join(item["pk"]["S"].removeprefix("join#"), item)
            for item in self._scan_prefix("join#", "list join tokens")
        ]
        return sorted(out, key=lambda t: (t.expires_at, t.token_hash))

    def delete_join_token(self, token_hash: str) -> bool:
        with translate_errors("delete join token"):
            resp = self._db.delete_item(
                TableName=self._table,
                Key={"pk": str_attr(f"join#{token_hash}")},
                ReturnValues="ALL_OLD",
            )
        return bool(resp.get("Attributes"))

    def _scan_prefix(self, prefix: str, what: str) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        kwargs: dict[str, Any] = {
            "TableName": self._table,
            "FilterExpression": "begins_with(pk, :p)",
            "ExpressionAttributeValues": {":p": str_attr(prefix)},
        }
        with translate_errors(what):
            while True:
                page = self._db.scan(**kwargs)
                items.extend(page.get("Items", []))
                if not page.get("LastEvaluatedKey"):
                    return items
                kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    # ------------------------------------------------------------------ signing key
    def ensure_signing_key(self, candidate: str) -> str:
        """Store ``candidate`` unless a key exists, then return the stored one (first wins)."""
        conditional_write(  # None: a key exists already, and wins
            "store signing key",
            self._db.put_item,
            TableName=self._table,
            Item={"pk": str_attr("meta#jwt"), "key": str_attr(candidate)},
            ConditionExpression=_NOT_EXISTS,
        )
        item = self._get("meta#jwt", "read signing key")
        if item is None:  # pragma: no cover - written just above
            raise Conflict("signing key vanished")
        return str(item["key"]["S"])

    def stored_signing_key(self) -> str | None:
        item = self._get("meta#jwt", "read signing key")
        return str(item["key"]["S"]) if item is not None else None

    def ping(self) -> None:
        with translate_errors("ping auth table"):
            self._db.describe_table(TableName=self._table)
