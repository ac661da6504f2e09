"""Records and store protocols for auth (API keys, refresh tokens, join tokens, signing key)
and runners (registration, heartbeats, runtime config, nonce replay cache).

Services depend on these protocols only; the DynamoDB adapters live in ``dynamo_auth.py`` and
``dynamo_runners.py``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True)
class ApiKeyRecord:
    """An API key ``gf_<id>_<secret>``; only ``sha256(secret)`` is kept."""

    id: str
    tenant: str
    role: str
    name: str
    secret_hash: str
    created_at: float
    revoked: bool = False


@dataclass(frozen=True)
class RefreshRecord:
    """A refresh token ``rt_<id>.<secret>`` of one rotation family."""

    id: str
    secret_hash: str
    family: str
    key_id: str
    tenant: str
    role: str
    expires_at: float
    used: bool = False


@dataclass(frozen=True)
class JoinTokenRecord:
    """A runner join token ``gfj_<secret>``, stored under ``sha256(token)``."""

    token_hash: str
    region: str
    labels: dict[str, str]
    expires_at: float


@dataclass(frozen=True)
class RunnerRecord:
    """A registered runner and its last heartbeat. ``secret`` verifies its HMAC signatures."""

    id: str
    name: str
    region: str
    labels: dict[str, str]
    secret: str
    registered_at: float
    revoked: bool = False
    last_heartbeat_at: float | None = None
    gpus: list[dict[str, Any]] = field(default_factory=list)
    models: list[dict[str, Any]] = field(default_factory=list)
    triton: dict[str, Any] = field(default_factory=dict)
    running_jobs: list[str] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)


class AuthStore(Protocol):
    """Keys, refresh-token families, join tokens and the shared signing key."""

    def save_api_key(self, rec: ApiKeyRecord) -> None: ...
    def find_api_key(self, key_id: str) -> ApiKeyRecord | None: ...
    def revoke_api_key(self, key_id: str) -> bool: ...
    def save_refresh_token(self, rec: RefreshRecord) -> None: ...
    def find_refresh_token(self, token_id: str) -> RefreshRecord | None: ...
    def mark_refresh_used(self, token_id: str) -> bool: ...
    def revoke_family(self, family: str, expires_at: float) -> None: ...
    def family_revoked(self, family: str) -> bool: ...
    def save_join_token(self, rec: JoinTokenRecord) -> None: ...
    def find_join_token(self, token_hash: str) -> JoinTokenRecord | None: ...
    def ensure_signing_key(self, candidate: str) -> str: ...
    def ping(self) -> None: ...


class RunnerStore(Protocol):
    """Runner registrations, heartbeats and runtime configs."""

    def create_runner(self, rec: RunnerRecord) -> None: ...
    def find_runner(self, runner_id: str) -> RunnerRecord | None: ...
    def record_heartbeat(
        self,
        runner_id: str,
        at: float,
        gpus: list[dict[str, Any]],
        models: list[dict[str, Any]],
        triton: dict[str, Any],
        running_jobs: list[str],
    ) -> RunnerRecord | None: ...
    def merge_config(self, runner_id: str, patch: dict[str, Any]) -> RunnerRecord | None: ...
    def revoke_runner(self, runner_id: str) -> bool: ...
    def list_runners(self) -> list[RunnerRecord]: ...
    def ping(self) -> None: ...


class NonceStore(Protocol):
    """Replay cache of signed runner calls."""

    def remember_nonce(self, key: str, now: float, expires_at: float) -> bool: ...
