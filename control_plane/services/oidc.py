"""Bearer tokens of an external OpenID Connect issuer (an organisation's identity provider).

Configured with ``oidc_issuer``, ``oidc_audience`` and ``oidc_jwks_url`` (settings): a bearer
JWT whose unverified ``iss`` is that issuer is verified here, never by ``tokens.py``:

- the signature with a key of the issuer's JWKS, found by the token's ``kid`` through
  PyJWT's ``PyJWKClient`` (the key set is cached ``oidc_jwks_cache_s``; an unknown ``kid``
  makes it fetch the set again, at most every ``oidc_jwks_refresh_s``, so a rotated key is
  picked up without a restart and random ``kid``s cannot make the control plane hammer the
  issuer);
- only asymmetric algorithms (``oidc_algorithms``, default RS256 and ES256): never ``none``
  or HS*, whatever the header says;
- ``iss``, ``aud`` (must contain ``oidc_audience``), ``exp``/``nbf``/``iat`` (numbers, within
  ``max_token_lifetime_s``), ``sub``.

The token maps to a principal through configured claims: the tenant from
``oidc_tenant_claim`` (a name as tenants are everywhere), the role from ``oidc_role_claim``: a
string or a list of strings (e.g. groups), each mapped through ``oidc_role_map``
(``"value=role,…"``) or taken as is when it is ``viewer``/``user``/``admin``; several give the
strongest role; none gives ``oidc_default_role`` or 401. A claim name with dots that is not a
top-level claim is read as a path (``realm_access.roles``).

The principal is ``external``: its ``sub`` (``oidc:<sub>``) is no API key here, so API-key
revocation does not apply; the issuer's own (short token lifetimes) does.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Mapping
from typing import Any

import jwt

from control_plane.errors import Unauthorized
from control_plane.services.claims import check_time_claims
from control_plane.services.principal import ROLE_SCOPES, Principal

LEEWAY_S = 10
_REQUIRED = ["exp", "iat", "iss", "aud", "sub"]
_TENANT = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
_RANK = {"viewer": 0, "user": 1, "admin": 2}
ASYMMETRIC = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384",
                        "ES512", "EdDSA"})  # fmt: skip


def parse_role_map(text: str) -> dict[str, str]:
    """``"gpufleet-admins=admin, ml=user"`` -> a dict; ``ValueError`` naming a bad pair."""
    out: dict[str, str] = {}
    for pair in (p.strip() for p in text.split(",")):
        if not pair:
            continue
        value, sep, role = pair.rpartition("=")
        if not sep or not value or role not in ROLE_SCOPES:
            raise ValueError(
                f"oidc_role_map: {pair!r} is not 'claim value=role' with role one of "
                f"{sorted(ROLE_SCOPES)}"
            )
        out[value] = role
    return out


def _claim(claims: Mapping[str, Any], name: str) -> Any:
    if name in claims:
        return claims[name]
    value: Any = claims
    for part in name.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    return value


class OidcVerifier:
    """Verifies the configured issuer's tokens and maps them to principals."""

    def __init__(
        self,
        issuer: str,
        audience: str,
        jwks_url: str,
        *,
        tenant_claim: str = "tenant",
        role_claim: str = "role",
        role_map: Mapping[str, str] | None = None,
        default_role: str | None = None,
        algorithms: list[str] | None = None,
        max_lifetime_s: int | None = None,
        jwks_cache_s: float = 300.0,
        jwks_refresh_s: float = 30.0,
        timeout_s: float = 5.0,
    ) -> None:
        algs = algorithms or ["RS256", "ES256"]
        bad = [a for a in algs if a not in ASYMMETRIC]
        if bad:
            raise ValueError(f"oidc_algorithms: {bad} are not asymmetric JWS algorithms")
        if default_role is not None and default_role not in ROLE_SCOPES:
            raise ValueError(f"oidc_default_role: {default_role!r} is not a role")
        self.issuer = issuer
        self._audience = audience
        self._tenant_claim = tenant_claim
        self._role_claim = role_claim
        self._role_map = dict(role_map or {})
        self._default_role = default_role
        self._algorithms = algs
        self._max_lifetime_s = max_lifetime_s
        kwargs: dict[str, Any] = {"cache_keys": False, "lifespan": jwks_cache_s}
        params = inspect.signature(jwt.PyJWKClient).parameters
        if "cooldown_duration" in params:  # PyJWT's own limit on refetches for unknown kids
            kwargs["cooldown_duration"] = jwks_refresh_s
        if "timeout" in params:
            kwargs["timeout"] = timeout_s
        self._jwks = jwt.PyJWKClient(jwks_url, **kwargs)

    def handles(self, token: str) -> bool:
        """Whether ``token`` claims to come from this issuer (unverified: routing only)."""
        try:
            claims = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError:
            return False
        return claims.get("iss") == self.issuer

    def verify(self, token: str) -> tuple[Principal, float]:
        """The principal of a valid token of the issuer and the wall-clock time until which
        it may be remembered; ``Unauthorized`` otherwise."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise Unauthorized("malformed identity token") from exc
        if header.get("alg") not in self._algorithms:
            raise Unauthorized("unsupported identity token algorithm")
        try:
            key = self._jwks.get_signing_key_from_jwt(token)
        except jwt.PyJWKClientConnectionError as exc:
            raise Unauthorized("the identity provider's keys cannot be fetched now") from exc
        except jwt.PyJWTError as exc:
            raise Unauthorized("identity token signed by an unknown key") from exc
        try:
            claims = jwt.decode(
                token,
                key.key,
                algorithms=self._algorithms,
                audience=self._audience,
                issuer=self.issuer,
                leeway=LEEWAY_S,
                options={"require": _REQUIRED},
            )
        except jwt.ExpiredSignatureError as exc:
            raise Unauthorized("identity token expired") from exc
        except jwt.InvalidAudienceError as exc:
            raise Unauthorized("identity token is for another audience") from exc
        except jwt.PyJWTError as exc:
            raise Unauthorized("invalid identity token") from exc
        check_time_claims(claims, self._max_lifetime_s)
        tenant = _claim(claims, self._tenant_claim)
        if not isinstance(tenant, str) or not _TENANT.fullmatch(tenant):
            raise Unauthorized(f"identity token lacks a valid tenant claim {self._tenant_claim!r}")
        role = self._role(_claim(claims, self._role_claim))
        principal = Principal(
            sub=f"oidc:{claims['sub']}",
            tenant=tenant,
            role=role,
            scopes=ROLE_SCOPES[role],
            external=True,
        )
        return principal, float(claims["exp"]) + LEEWAY_S

    def _role(self, raw: Any) -> str:
        values = raw if isinstance(raw, list) else [raw]
        roles = []
        for v in values:
            if not isinstance(v, str):
                continue
            mapped = self._role_map.get(v) or (v if v in ROLE_SCOPES else None)
            if mapped is not None:
                roles.append(mapped)
        if roles:
            return max(roles, key=_RANK.__getitem__)
        if self._default_role is not None:
            return self._default_role
        raise Unauthorized(f"identity token's claim {self._role_claim!r} maps to no role")
