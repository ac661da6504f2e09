"""Webhook records and the storage protocols the webhook services depend on.

A *delivery* is one event of one job (``job.running`` or ``job.completed``) to the job's
webhook URL; it is created once (idempotent per job + event) and then attempted until it is
delivered, disabled (410 Gone), refused or out of attempts. Each attempt leaves an
``AttemptRecord`` in the job's delivery log.

Claim protocol (what makes two workers never send one attempt concurrently): every live
delivery has exactly one *index entry* ``(shard, sk)`` whose ``sk`` begins with the time it is
next due. ``claim`` atomically (a) checks the delivery still points at that entry, (b)
replaces the entry with one due when the claim's lease ends and (c) stores a fresh claim
token; ``finish`` commits only under that token. A worker that dies mid-attempt leaves the
lease entry behind, so the delivery is claimed again once the lease has run out.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

DeliveryState = Literal["pending", "sending", "delivered", "failed", "disabled"]
EventType = Literal["job.running", "job.completed"]
FINAL_STATES: frozenset[str] = frozenset({"delivered", "failed", "disabled"})


@dataclass(frozen=True)
class Delivery:
    """One event of one job to its webhook URL (the body is frozen when it is enqueued)."""

    job_id: str
    event: str
    msg_id: str
    tenant: str
    url: str
    body: str
    state: str
    attempts: int
    created_at: float
    next_attempt_at: float | None = None
    index_shard: int = 0
    index_sk: str | None = None
    claim: str | None = None


@dataclass(frozen=True)
class AttemptRecord:
    """One attempt in a job's delivery log."""

    job_id: str
    event: str
    msg_id: str
    attempt: int
    at: float
    duration_ms: int
    status_code: int | None = None
    error: str | None = None


@dataclass(frozen=True)
class DueRef:
    """An index entry that is due: the delivery it points at and the entry's key."""

    job_id: str
    event: str
    shard: int
    sk: str


@dataclass(frozen=True)
class Claim:
    """A claimed attempt: the delivery as it is now (``attempts`` counts this one)."""

    delivery: Delivery
    token: str
    lease_sk: str


@dataclass(frozen=True)
class SecretRecord:
    """A tenant's signing secrets; ``previous`` stays valid until ``previous_until``."""

    tenant: str
    current: str
    version: int
    created_at: float
    previous: str | None = None
    previous_until: float | None = None


class WebhookStore(Protocol):
    """Deliveries, their due index and their attempt log."""

    def enqueue(self, delivery: Delivery, due_at: float) -> bool:
        """Create the delivery and its index entry; False if it already exists."""
        ...

    def due(self, shard: int, now: float, limit: int) -> list[DueRef]:
        """Index entries of ``shard`` due at ``now``, oldest first."""
        ...

    def get(self, job_id: str, event: str) -> Delivery | None:
        """One delivery (strongly consistent), or None."""
        ...

    def claim(self, ref: DueRef, seen: Delivery, token: str, lease_until: float) -> Claim | None:
        """Claim the next attempt of ``seen`` if it still points at ``ref``; None if lost."""
        ...

    def drop_stale(self, ref: DueRef) -> None:
        """Delete an index entry that no delivery points at any more."""
        ...

    def finish(
        self, claim: Claim, attempt: AttemptRecord, state: str, next_at: float | None
    ) -> bool:
        """Commit an attempt's outcome under the claim token; False if the claim was lost."""
        ...

    def deliveries(self, job_id: str) -> list[Delivery]:
        """Every delivery of a job."""
        ...

    def attempts(self, job_id: str) -> list[AttemptRecord]:
        """Every attempt of every delivery of a job, in order."""
        ...

    def ping(self) -> None:
        """Raise ``Unavailable`` when the table cannot be reached."""
        ...


class SecretStore(Protocol):
    """Tenant signing secrets."""

    def get(self, tenant: str) -> SecretRecord | None:
        """The tenant's secrets (strongly consistent), or None."""
        ...

    def create(self, record: SecretRecord) -> bool:
        """Store the first secret of a tenant; False if the tenant already has one."""
        ...

    def replace(self, record: SecretRecord, expected_version: int) -> bool:
        """Store ``record`` if the stored version is still ``expected_version``."""
        ...
