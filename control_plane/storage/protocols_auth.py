"""Records and store protocols for auth (API keys, refresh tokens, join tokens, signing key)
and runners (registration, heartbeats, runtime config, nonce replay cache).

Services depend on these protocols only; the DynamoDB adapters live in ``dynamo_auth.py`` and
``dynamo_runners.py``, the SQLite ones in ``sqlite/auth.py`` and ``sqlite/runners.py``; the
docstrings below are their contract (``tests/contract/test_other_stores.py``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from gpufleet.wire import Role


@dataclass(frozen=True)
class ApiKeyRecord:
    """An API key ``gf_<id>_<secret>``; only ``sha256(secret)`` is kept."""

    id: str
    tenant: str
    role: Role
    name: str
    secret_hash: str
    created_at: float
    revoked: bool = False
    # After a rotation: the replaced secret's hash, accepted until ``previous_valid_until``.
    previous_secret_hash: str | None = None
    previous_valid_until: float | None = None


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
    max_uses: int = 1  # runners it may register; 0: no limit (a token stored before limits)
    uses: int = 0
    last_used_at: float | None = None


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
    # HMAC secret rotation (services/runners.py): a new secret offered in a heartbeat answer
    # (``pending_secret``) becomes ``secret`` once the runner signs with it; the replaced one
    # stays valid until ``previous_valid_until``. ``secret_set_at``: when ``secret`` began.
    pending_secret: str | None = None
    previous_secret: str | None = None
    previous_valid_until: float | None = None
    secret_set_at: float | None = None
    join_token: str | None = None  # id of the join token it registered with (jt_…)


class AuthStore(Protocol):
    """Keys, refresh-token families, join tokens and the shared signing key.

    Errors: ``Unavailable`` when the backend cannot be reached (as every store, see
    ``protocols.py``). Reads are strongly consistent. Expiry: refresh tokens, revoked
    families and join tokens carry ``expires_at``; the backend deletes them some time after
    it (DynamoDB TTL, up to days later; SQLite: refresh and join tokens a day after, a batch
    per new token; families are kept), so a ``find_*`` may still return an expired record:
    callers check ``expires_at`` themselves.
    """

    def save_api_key(self, rec: ApiKeyRecord) -> None:
        """Store a new key; ``Conflict`` (nothing written) when the id exists."""
        ...

    def find_api_key(self, key_id: str) -> ApiKeyRecord | None:
        """The key (revoked ones too), or None."""
        ...

    def list_api_keys(self) -> list[ApiKeyRecord]:
        """Every API key (revoked ones too), oldest first; may lag a save by a moment
        (DynamoDB: an eventually consistent Scan of the auth table's ``key#`` items)."""
        ...

    def revoke_api_key(self, key_id: str) -> bool:
        """Mark the key revoked (again: still True); False when there is no such key."""
        ...

    def rotate_api_key(
        self, key_id: str, expected_hash: str, new_hash: str, previous_valid_until: float
    ) -> bool:
        """Replace the key's secret hash by ``new_hash``, keeping ``expected_hash`` as
        ``previous_secret_hash`` until ``previous_valid_until``, iff the key exists, is not
        revoked and its current hash is ``expected_hash`` (of concurrent rotations exactly
        one wins); False otherwise."""
        ...

    def save_refresh_token(self, rec: RefreshRecord) -> None:
        """Store a new refresh token; ``Conflict`` (nothing written) when the id exists."""
        ...

    def find_refresh_token(self, token_id: str) -> RefreshRecord | None:
        """The token (used or expired ones too, until the backend purges them), or None."""
        ...

    def mark_refresh_used(self, token_id: str) -> bool:
        """``used`` false -> true; False when the token is missing or used already (a
        reuse). Of concurrent presenters of one token exactly one gets True."""
        ...

    def revoke_family(self, family: str, expires_at: float) -> None:
        """Record the family as revoked until at least ``expires_at`` (unconditional; again:
        the new ``expires_at`` replaces the old)."""
        ...

    def family_revoked(self, family: str) -> bool:
        """True once ``revoke_family`` was called for ``family`` (at least until its
        ``expires_at``; after that it may turn False on DynamoDB)."""
        ...

    def save_join_token(self, rec: JoinTokenRecord) -> None:
        """Store a new join token under its hash; ``Conflict`` when that hash exists."""
        ...

    def find_join_token(self, token_hash: str) -> JoinTokenRecord | None:
        """The join token (expired ones too, until purged), or None."""
        ...

    def claim_join_token(self, token_hash: str, now: float) -> JoinTokenRecord | None:
        """Count one use (``uses + 1``, ``last_used_at = now``) iff the token exists, has not
        expired (``expires_at >= now``) and has uses left (``uses < max_uses``, or
        ``max_uses == 0``); the token as stored now, or None. Of concurrent claimants of the
        last use exactly one gets it."""
        ...

    def consume_join_token(self, token_hash: str) -> bool:
        """Delete the join token; False when it does not exist (used already). Of concurrent
        consumers of one token exactly one gets True."""
        ...

    def list_join_tokens(self) -> list[JoinTokenRecord]:
        """Every stored join token (expired ones too until deleted), by expiry; may lag a save
        by a moment (DynamoDB: a Scan of the ``join#`` items)."""
        ...

    def delete_join_token(self, token_hash: str) -> bool:
        """Remove a join token (it no longer registers runners); False when there was none."""
        ...

    def ensure_signing_key(self, candidate: str) -> str:
        """Store ``candidate`` when no signing key exists; return the stored key. The first
        writer wins and every caller, concurrent ones too, gets the winner's key."""
        ...

    def stored_signing_key(self) -> str | None:
        """The stored signing key, or None when there is none (a new store, or one that lost
        its data: the control plane's store marker, see ``services/store_marker.py``)."""
        ...

    def ping(self) -> None:
        """Return when the store can be used; ``Unavailable`` otherwise."""
        ...


class RunnerStore(Protocol):
    """Runner registrations, heartbeats and runtime configs.

    ``config`` values are scalars: bools and numbers are kept as such, anything else as its
    ``str``. Errors: ``Unavailable`` when the backend cannot be reached. Nothing expires.
    """

    def create_runner(self, rec: RunnerRecord) -> None:
        """Store a new runner, always as not revoked and without a heartbeat
        (``rec.revoked`` and ``rec.last_heartbeat_at`` are ignored); ``Conflict`` when the
        id exists."""
        ...

    def find_runner(self, runner_id: str) -> RunnerRecord | None:
        """The runner (revoked ones too), or None."""
        ...

    def record_heartbeat(
        self,
        runner_id: str,
        at: float,
        gpus: list[dict[str, Any]],
        models: list[dict[str, Any]],
        triton: dict[str, Any],
        running_jobs: list[str],
    ) -> RunnerRecord | None:
        """Store the heartbeat (``last_heartbeat_at = at`` and the four fields, replaced
        whole) iff the runner exists and is not revoked; the runner as stored now, or None."""
        ...

    def merge_config(self, runner_id: str, patch: dict[str, Any]) -> RunnerRecord | None:
        """Set the fields of ``patch`` in the runner's config, keeping the others, iff the
        runner exists and is not revoked (concurrent patches of different fields both
        stick); the runner as stored now, or None. An empty patch is ``find_runner``."""
        ...

    def offer_secret(self, runner_id: str, secret: str) -> RunnerRecord | None:
        """Set ``pending_secret`` iff the runner exists, is not revoked and has none pending;
        the runner as stored now (its pending secret may be an earlier offer), or None when
        it is missing or revoked."""
        ...

    def promote_secret(
        self, runner_id: str, pending: str, at: float, previous_valid_until: float
    ) -> RunnerRecord | None:
        """iff the runner is live and ``pending_secret == pending``: ``previous_secret`` =
        ``secret`` (valid until ``previous_valid_until``), ``secret`` = ``pending``,
        ``secret_set_at`` = ``at``, no pending secret; the runner as stored now. None when
        the condition fails (another replica promoted it first: re-read)."""
        ...

    def revoke_runner(self, runner_id: str) -> bool:
        """Mark the runner revoked (again: still True); False when there is no such runner.
        A revoked runner stays revoked."""
        ...

    def list_runners(self) -> list[RunnerRecord]:
        """Every runner, revoked ones too, by ``registered_at`` (ties in no promised
        order); may lag a registration by a moment (DynamoDB: an eventually consistent
        Scan)."""
        ...

    def ping(self) -> None:
        """Return when the store can be used; ``Unavailable`` otherwise."""
        ...


class NonceStore(Protocol):
    """Replay cache of signed runner calls. Times are whole seconds (``int(…)``)."""

    def remember_nonce(self, key: str, now: float, expires_at: float) -> bool:
        """Store ``key`` until ``expires_at`` iff it is absent or its stored entry expired
        (stored ``expires_at < int(now)``): True; False on a replay of an unexpired key. Of
        concurrent calls with one key exactly one gets True. Expired entries are deleted by
        the backend some time later. ``Unavailable`` when the backend cannot be reached."""
        ...

    def ping(self) -> None:
        """Return when the store can be used; ``Unavailable`` otherwise."""
        ...
