"""Contract of ``SigningKeyStore`` (storage/protocols_keys.py) on SQLite and DynamoDB (moto
over HTTP), and of ``SigningKeys`` sharing keys between two replicas on each store."""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

import jwt
import pytest

from control_plane.errors import Unauthorized
from control_plane.services.signing_keys import SigningKeys, generate_key
from control_plane.storage.dynamo_keys import DynamoSigningKeyStore
from control_plane.storage.protocols_keys import SigningKeyStore
from control_plane.storage.sqlite.db import Database
from control_plane.storage.sqlite.keys import SqliteSigningKeyStore
from tests.contract.test_job_stores import race


@pytest.fixture
def keys_store(backend: str, request: pytest.FixtureRequest) -> SigningKeyStore:
    if backend == "sqlite":
        db: Database = request.getfixturevalue("sqlite_db")
        return SqliteSigningKeyStore(db)
    settings = request.getfixturevalue("settings")
    return DynamoSigningKeyStore(request.getfixturevalue("aws")[0], settings.table("auth"))


def test_first_key_then_rotation_retires_the_old_one(keys_store: SigningKeyStore) -> None:
    assert keys_store.list_signing_keys() == []
    a = generate_key("EdDSA", 100.0)
    assert keys_store.add_signing_key(replace(a, retired_at=5.0), None, 100.0)
    assert keys_store.list_signing_keys() == [a]  # retired_at ignored: stored current
    assert not keys_store.add_signing_key(generate_key("EdDSA", 101.0), None, 101.0)
    b = generate_key("ES256", 200.0)
    assert not keys_store.add_signing_key(b, "nope", 200.0)  # not the current key
    assert keys_store.add_signing_key(b, a.kid, 200.0)
    assert keys_store.list_signing_keys() == [replace(a, retired_at=200.0), b]
    assert b.public_jwk["kty"] == "EC" and keys_store.list_signing_keys()[1].alg == "ES256"
    assert not keys_store.add_signing_key(generate_key("EdDSA", 300.0), a.kid, 300.0)
    assert not keys_store.delete_signing_key(b.kid)  # the current key stays
    assert keys_store.delete_signing_key(a.kid)
    assert not keys_store.delete_signing_key(a.kid)
    assert keys_store.list_signing_keys() == [b]


def test_concurrent_rotations_have_one_winner(keys_store: SigningKeyStore) -> None:
    first = generate_key("EdDSA", 1.0)
    assert keys_store.add_signing_key(first, None, 1.0)
    wins = race(
        8, lambda i: keys_store.add_signing_key(generate_key("EdDSA", 2.0 + i), first.kid, 9.0)
    )
    assert sum(wins) == 1
    recs = keys_store.list_signing_keys()
    assert len(recs) == 2 and [r.retired_at is None for r in recs].count(True) == 1


def test_first_key_race_has_one_winner(keys_store: SigningKeyStore) -> None:
    wins = race(8, lambda i: keys_store.add_signing_key(generate_key("EdDSA", 1.0 + i), None, 1.0))
    assert sum(wins) == 1 and len(keys_store.list_signing_keys()) == 1


class Clock:
    def __init__(self) -> None:
        self.t = time.time()

    def __call__(self) -> float:
        return self.t


def _claims(_at: float) -> dict[str, Any]:
    """Claims valid by the wall clock PyJWT checks (the keys' clock is the fake one)."""
    now = int(time.time())
    return {"iss": "i", "aud": "a", "sub": "s", "iat": now, "exp": now + 600}


def _decode(keys: SigningKeys, token: str) -> dict[str, Any]:
    return keys.decode(
        token, typ="t", audience="a", issuer="i", required=["exp", "sub"], leeway_s=0
    )


def test_replicas_share_keys_and_rotation_overlap(keys_store: SigningKeyStore) -> None:
    """Two replicas on one store: the same key signs; after a rotation on one the other
    verifies the new kid at once (unknown kid -> re-read) and the old kid until the overlap
    ends; scheduled rotation happens once."""
    clock = Clock()
    a = SigningKeys(keys_store, rotate_every_s=1000, overlap_s=100, cache_s=30, now=clock)
    b = SigningKeys(keys_store, rotate_every_s=1000, overlap_s=100, cache_s=30, now=clock)
    t1 = a.sign(_claims(clock.t), "t")
    assert _decode(b, t1)["sub"] == "s"
    kid1 = jwt.get_unverified_header(t1)["kid"]
    assert [k["kid"] for k in b.jwks()] == [kid1]

    clock.t += 2
    a.rotate()
    t2 = a.sign(_claims(clock.t), "t")
    kid2 = jwt.get_unverified_header(t2)["kid"]
    assert kid2 != kid1
    assert _decode(b, t2)["sub"] == "s"  # unknown kid: b re-reads the store
    assert _decode(b, t1)["sub"] == "s"  # rotated out, inside the overlap
    assert [k["kid"] for k in b.jwks()] == [kid2, kid1]

    clock.t += 101
    for replica in (a, b):
        with pytest.raises(Unauthorized, match="unknown or retired"):
            _decode(replica, t1)
    assert [k["kid"] for k in a.jwks()] == [kid2]

    clock.t += 1000  # the schedule: the next signature rotates, once, whoever signs first
    kid3 = jwt.get_unverified_header(b.sign(_claims(clock.t), "t"))["kid"]
    kid3_a = jwt.get_unverified_header(a.sign(_claims(clock.t), "t"))["kid"]
    assert kid3 not in (kid1, kid2) and kid3_a == kid3
    assert len(keys_store.list_signing_keys()) == 2  # kid1 pruned at the rotation


def test_tampered_and_wrong_algorithm_tokens_refused(keys_store: SigningKeyStore) -> None:
    keys = SigningKeys(keys_store, alg="ES256")
    token = keys.sign(_claims(time.time()), "t")
    head, _body, sig = token.split(".")
    forged_body = jwt.utils.base64url_encode(b'{"iss":"i","aud":"a","sub":"x","exp":9999999999}')
    with pytest.raises(Unauthorized, match="invalid token"):
        _decode(keys, f"{head}.{forged_body.decode()}.{sig}")
    kid = jwt.get_unverified_header(token)["kid"]
    hs = jwt.encode(
        _claims(time.time()), "k" * 32, algorithm="HS256", headers={"kid": kid, "typ": "t"}
    )
    with pytest.raises(Unauthorized, match="algorithm"):
        _decode(keys, hs)
    with pytest.raises(Unauthorized, match="type"):
        _decode(keys, keys.sign(_claims(time.time()), "other"))
