"""Checks of a JWT's time claims that PyJWT leaves out (shared by our own access tokens,
``tokens.py``, and external OpenID tokens, ``oidc.py``).

PyJWT converts ``exp``/``iat``/``nbf`` with ``int(...)``, so ``"exp": "9999999999"`` (a
string) passes its checks; RFC 7519 makes them NumericDate (a JSON number). And nothing
bounds how long a token lives: ``max_lifetime_s`` caps ``exp - iat``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from control_plane.errors import Unauthorized

TIME_CLAIMS = ("exp", "iat", "nbf")


def check_time_claims(claims: Mapping[str, Any], max_lifetime_s: int | None) -> None:
    """``Unauthorized`` unless every present time claim is a JSON number (not a string or a
    bool) and, with ``max_lifetime_s``, the token has ``iat`` and lives at most that long."""
    for name in TIME_CLAIMS:
        value = claims.get(name)
        if name in claims and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise Unauthorized(f"token claim {name!r} must be a number (NumericDate)")
    if max_lifetime_s is None:
        return
    if "exp" not in claims or "iat" not in claims:
        raise Unauthorized("token must carry 'exp' and 'iat'")
    if float(claims["exp"]) - float(claims["iat"]) > max_lifetime_s:
        raise Unauthorized(f"token lifetime exceeds the maximum of {max_lifetime_s} s")
