"""Access tokens: JWTs (typ ``at+jwt``) issued and verified per RFC 8725.

Signed with the shared asymmetric keys (EdDSA or ES256 with a ``kid``,
``services/signing_keys.py``) when the signer is given them, else HS256 with one shared
secret (``access_token_algorithm: HS256``, a single-secret setup).

Verification pins the algorithm (never taken from the token), checks the ``typ`` header, the
signature, ``exp``/``nbf``/``iat`` with a small leeway, ``iss`` and ``aud``, and requires every
claim the platform relies on.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from typing import Any

import jwt

from control_plane import clock
from control_plane.errors import Unauthorized
from control_plane.services.claims import check_time_claims
from control_plane.services.principal import ROLE_SCOPES, Principal
from control_plane.services.signing_keys import SigningKeys

ALGORITHM = "HS256"
TOKEN_TYPE = "at+jwt"  # noqa: S105 - a JWT typ, not a secret
LEEWAY_S = 10
_REQUIRED = ["exp", "iat", "nbf", "iss", "aud", "sub", "jti"]
VERIFIED_CACHE_SIZE = 10_000


class TokenSigner:
    """Issues and verifies access tokens: with ``keys`` (asymmetric, by kid) when given, else
    HS256 with the symmetric key from ``key_provider``."""

    def __init__(
        self,
        key_provider: Callable[[], str],
        issuer: str,
        audience: str,
        ttl_s: int,
        now: Callable[[], float] = clock.now,
        keys: SigningKeys | None = None,
        max_lifetime_s: int | None = None,
    ) -> None:
        self._keys = keys
        self._key = key_provider
        self._max_lifetime_s = max_lifetime_s  # exp - iat of a token verified here
        self._issuer = issuer
        self._audience = audience
        self._ttl_s = ttl_s
        self._now = now
        # token -> (expiry by the wall clock PyJWT checks against, principal)
        self._verified: dict[str, tuple[float, Principal]] = {}

    @property
    def ttl_s(self) -> int:
        return self._ttl_s

    def issue(self, sub: str, tenant: str, role: str) -> str:
        """A signed access token for an API key's identity."""
        iat = int(self._now())
        claims: dict[str, Any] = {
            "iss": self._issuer,
            "aud": self._audience,
            "sub": sub,
            "tenant": tenant,
            "role": role,
            "scopes": sorted(ROLE_SCOPES[role]),
            "iat": iat,
            "nbf": iat,
            "exp": iat + self._ttl_s,
            "jti": secrets.token_urlsafe(16),
        }
        if self._keys is not None:
            return self._keys.sign(claims, TOKEN_TYPE)
        return jwt.encode(claims, self._key(), algorithm=ALGORITHM, headers={"typ": TOKEN_TYPE})

    def verify(self, token: str) -> Principal:
        """The principal of a valid token; ``Unauthorized`` otherwise.

        A verified token's principal is remembered until the token expires (every
        synchronous inference carries one: checking the signature each time costs more than
        dispatching it); failures are never cached."""
        hit = self.remembered(token)
        if hit is not None:
            return hit
        principal, exp = self._verify(token)
        if len(self._verified) >= VERIFIED_CACHE_SIZE:
            self._verified.clear()
        self._verified[token] = (exp, principal)
        return principal

    def remember(self, token: str, principal: Principal, until: float) -> None:
        """Answer ``token`` with ``principal`` from memory until ``until`` (wall clock): an API
        key presented as a bearer token, checked against the store once (``auth.py``)."""
        if len(self._verified) >= VERIFIED_CACHE_SIZE:
            self._verified.clear()
        self._verified[token] = (until, principal)

    def remembered(self, token: str) -> Principal | None:
        """The principal of a token verified before and not expired since (no I/O)."""
        hit = self._verified.get(token)
        if hit is not None and hit[0] > time.time():
            return hit[1]
        return None

    def _verify(self, token: str) -> tuple[Principal, float]:
        if self._keys is not None:
            try:
                claims = self._keys.decode(
                    token,
                    typ=TOKEN_TYPE,
                    audience=self._audience,
                    issuer=self._issuer,
                    required=_REQUIRED,
                    leeway_s=LEEWAY_S,
                )
            except Unauthorized as exc:
                raise Unauthorized(f"access token: {exc.message}") from exc
            return self._principal(claims)
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise Unauthorized("malformed access token") from exc
        if header.get("alg") != ALGORITHM:
            raise Unauthorized("unsupported token algorithm")
        if header.get("typ") != TOKEN_TYPE:
            raise Unauthorized("not an access token")
        try:
            claims = jwt.decode(
                token,
                self._key(),
                algorithms=[ALGORITHM],
                audience=self._audience,
                issuer=self._issuer,
                leeway=LEEWAY_S,
                options={"require": _REQUIRED},
            )
        except jwt.ExpiredSignatureError as exc:
            raise Unauthorized("access token expired") from exc
        except jwt.PyJWTError as exc:
            raise Unauthorized("invalid access token") from exc
        return self._principal(claims)

    def _principal(self, claims: dict[str, Any]) -> tuple[Principal, float]:
        check_time_claims(claims, self._max_lifetime_s)  # numbers, lifetime within the limit
        role = claims.get("role")
        tenant = claims.get("tenant")
        if role not in ROLE_SCOPES or not isinstance(tenant, str) or not tenant:
            raise Unauthorized("invalid access token claims")
        presented = claims.get("scopes")
        scopes = frozenset(presented) if isinstance(presented, list) else frozenset()
        principal = Principal(
            sub=str(claims["sub"]), tenant=tenant, role=role, scopes=scopes & ROLE_SCOPES[role]
        )
        return principal, float(claims["exp"]) + LEEWAY_S
