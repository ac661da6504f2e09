"""Access-token issue and verification (RFC 8725 checks) without storage."""

from __future__ import annotations

import base64
import json
import time

import jwt
import pytest

from control_plane.errors import Unauthorized
from control_plane.services.principal import ROLE_SCOPES
from control_plane.services.tokens import TokenSigner

KEY = "unit-test-signing-key-" + "0123456789abcdef" * 3


def signer(
    now: float | None = None, issuer: str = "gpufleet", audience: str = "gpufleet"
) -> TokenSigner:
    return TokenSigner(lambda: KEY, issuer, audience, 900, (lambda: now) if now else time.time)


def claims(**over: object) -> dict[str, object]:
    t = int(time.time())
    base: dict[str, object] = {
        "iss": "gpufleet",
        "aud": "gpufleet",
        "sub": "key_1",
        "tenant": "t1",
        "role": "user",
        "scopes": ["jobs:read"],
        "iat": t,
        "nbf": t,
        "exp": t + 600,
        "jti": "j1",
    }
    base.update(over)
    return {k: v for k, v in base.items() if v is not None}


def test_issue_and_verify_round_trip() -> None:
    s = signer()
    token = s.issue("key_1", "t1", "viewer")
    assert jwt.get_unverified_header(token) == {"alg": "HS256", "typ": "at+jwt"}
    p = s.verify(token)
    assert (p.sub, p.tenant, p.role) == ("key_1", "t1", "viewer")
    assert p.scopes == ROLE_SCOPES["viewer"]


def test_expired_token_rejected() -> None:
    token = signer(now=time.time() - 3600).issue("key_1", "t1", "user")
    with pytest.raises(Unauthorized, match="expired"):
        signer().verify(token)


def test_not_yet_valid_token_rejected() -> None:
    token = signer(now=time.time() + 3600).issue("key_1", "t1", "user")
    with pytest.raises(Unauthorized):
        signer().verify(token)


def test_forged_signature_rejected() -> None:
    token = jwt.encode(
        claims(),
        "another-key-" + "0123456789abcdef" * 3,
        algorithm="HS256",
        headers={"typ": "at+jwt"},
    )
    with pytest.raises(Unauthorized):
        signer().verify(token)


@pytest.mark.parametrize("alg", ["HS384", "HS512"])
def test_other_algorithms_rejected(alg: str) -> None:
    token = jwt.encode(claims(), KEY, algorithm=alg, headers={"typ": "at+jwt"})
    with pytest.raises(Unauthorized, match="algorithm"):
        signer().verify(token)


def test_alg_none_rejected() -> None:
    def b64(d: dict[str, object]) -> str:
        return base64.urlsafe_b64encode(json.dumps(d).encode()).rstrip(b"=").decode()

    token = f"{b64({'alg': 'none', 'typ': 'at+jwt'})}.{b64(claims())}."
    with pytest.raises(Unauthorized):
        signer().verify(token)


def test_wrong_typ_rejected() -> None:
    token = jwt.encode(claims(), KEY, algorithm="HS256", headers={"typ": "JWT"})
    with pytest.raises(Unauthorized, match="not an access token"):
        signer().verify(token)


@pytest.mark.parametrize(
    "over",
    [
        {"iss": "evil"},
        {"aud": "other"},
        {"jti": None},
        {"exp": None},
        {"role": "root"},
        {"tenant": ""},
    ],
)
def test_bad_claims_rejected(over: dict[str, object]) -> None:
    token = jwt.encode(claims(**over), KEY, algorithm="HS256", headers={"typ": "at+jwt"})
    with pytest.raises(Unauthorized):
        signer().verify(token)


def test_scopes_capped_by_role() -> None:
    token = jwt.encode(
        claims(role="viewer", scopes=["jobs:write", "admin", "jobs:read"]),
        KEY,
        algorithm="HS256",
        headers={"typ": "at+jwt"},
    )
    assert signer().verify(token).scopes == frozenset({"jobs:read"})


@pytest.mark.parametrize("garbage", ["", "abc", "a.b.c", "Bearer x"])
def test_garbage_rejected(garbage: str) -> None:
    with pytest.raises(Unauthorized):
        signer().verify(garbage)
