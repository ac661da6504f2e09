"""Token state of a client: an API key exchanged for a token pair, refreshed before expiry.

Pure state, no I/O: :mod:`gpufleet._transport` decides *when* to call ``/v1/auth/token`` or
``/v1/auth/refresh`` from what this object says, and stores the answer here.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from gpufleet.wire import TokenPair

__all__ = ["TokenState"]

#: Refresh when less than this share of the token's lifetime is left (at most 60 s early).
REFRESH_SHARE = 0.2
MAX_REFRESH_MARGIN_S = 60.0


@dataclass
class TokenState:
    """Credentials of one client.

    ``api_key`` (``gf_…``) can mint new token pairs; ``access_token`` alone (a token given
    by the caller) is used as is until the server rejects it.
    """

    api_key: str | None = None
    access_token: str | None = None
    refresh_token: str | None = None
    expires_at: float | None = None
    lifetime_s: float = 0.0
    clock: Callable[[], float] = field(default=time.time, repr=False)

    def __post_init__(self) -> None:
        if self.api_key is None and self.access_token is None:
            raise ValueError("give an api_key or a token")

    @property
    def can_renew(self) -> bool:
        """Whether a new access token can be obtained (refresh token or API key)."""
        return self.refresh_token is not None or self.api_key is not None

    def fresh_token(self) -> str | None:
        """The access token if it is valid for a while yet; ``None`` when one must be fetched."""
        if self.access_token is None:
            return None
        if self.expires_at is None or not self.can_renew:
            return self.access_token
        margin = min(MAX_REFRESH_MARGIN_S, self.lifetime_s * REFRESH_SHARE)
        if self.clock() >= self.expires_at - margin:
            return None
        return self.access_token

    def store(self, pair: TokenPair) -> str:
        """Keep a token pair just received; returns the access token."""
        self.access_token = pair.access_token
        self.refresh_token = pair.refresh_token
        self.lifetime_s = float(pair.expires_in)
        self.expires_at = self.clock() + pair.expires_in
        return pair.access_token

    def forget_refresh(self) -> None:
        """Drop a refresh token the server refused (the API key, if any, mints a new pair)."""
        self.refresh_token = None

    def invalidate(self, token: str) -> None:
        """Mark ``token`` as rejected so the next request renews it (if it is still current)."""
        if self.access_token == token and self.can_renew:
            self.expires_at = 0.0
