"""Records and store protocol of the asymmetric signing keys (``services/signing_keys.py``).

Every replica signs access tokens and direct-mode tickets with the same current key and
verifies with every key still inside its overlap window, so the keys live in the store. The
SQLite adapter is ``sqlite/keys.py``, the DynamoDB one ``dynamo_keys.py`` (items of the auth
table); the docstrings below are their contract (``tests/contract/test_signing_key_stores.py``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True)
class SigningKeyRecord:
    """One key pair. ``retired_at`` None: the current key (it signs); set: rotated out at
    that time (it still verifies for the overlap window the service applies)."""

    kid: str
    alg: str  # "EdDSA" | "ES256"
    private_pem: str
    public_jwk: dict[str, str] = field(default_factory=dict)
    created_at: float = 0.0
    retired_at: float | None = None


class SigningKeyStore(Protocol):
    """The signing keys of the control plane. Exactly one key is current once any exists.

    Errors: ``Unavailable`` when the backend cannot be reached. Reads are strongly consistent.
    """

    def list_signing_keys(self) -> list[SigningKeyRecord]:
        """Every stored key, oldest (``created_at``) first."""
        ...

    def add_signing_key(self, rec: SigningKeyRecord, replaces: str | None, at: float) -> bool:
        """Make ``rec`` (``retired_at`` ignored, stored as None) the current key, in one
        atomic step: ``replaces=None`` only when no key is current yet; ``replaces=kid`` only
        while ``kid`` is the current key, which gets ``retired_at = at``. False, nothing
        written, when that condition fails (another replica created or rotated first) or
        ``rec.kid`` exists. Of concurrent callers with the same ``replaces`` one gets True."""
        ...

    def delete_signing_key(self, kid: str) -> bool:
        """Delete a retired key; False when there is no such key or it is the current one."""
        ...
