"""Who is calling: the verified claims of an access token (or a runner's identity)."""

from __future__ import annotations

from dataclasses import dataclass, field

from control_plane.errors import Forbidden

READ_SCOPES = frozenset({"jobs:read", "models:read", "runners:read"})
WRITE_SCOPES = frozenset({"jobs:write", "models:write"})
ROLE_SCOPES: dict[str, frozenset[str]] = {
    "viewer": READ_SCOPES,
    "user": READ_SCOPES | WRITE_SCOPES,
    "admin": READ_SCOPES | WRITE_SCOPES | frozenset({"admin", "runners:write"}),
}


@dataclass(frozen=True)
class Principal:
    sub: str
    tenant: str
    role: str
    scopes: frozenset[str] = field(default_factory=frozenset)
    # True for a token of an external OpenID issuer (``services/oidc.py``): ``sub`` is not
    # an API key of this control plane, so no key revocation applies (the issuer's does).
    external: bool = False

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

    def can_see_tenant(self, tenant: str) -> bool:
        """Admins see every tenant; everyone else only their own (others answer 404)."""
        return self.is_admin or tenant == self.tenant

    def require(self, scope: str) -> None:
        if scope not in self.scopes:
            raise Forbidden(f"this token lacks the scope {scope!r}")
