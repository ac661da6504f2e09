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
    event: EventType
    msg_id: str
    tenant: str
    url: str
    body: str
    state: DeliveryState
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
    """Deliveries, their due index and their attempt log.

    Every state change is one atomic, conditional step (DynamoDB: a transaction; SQLite: one
    write transaction); a lost condition answers None/False and writes nothing. Reads are
    strongly consistent. ``index_sk`` values are opaque: compare them, never parse them.
    Expiry: deliveries and attempts are deleted ``LOG_TTL_S`` (30 days) after the delivery's
    ``created_at``, some time later (DynamoDB TTL; SQLite: a batch per ``enqueue``); index
    entries never expire (``drop_stale`` removes them). Every method raises ``Unavailable``
    when the backend cannot be reached.
    """

    def enqueue(self, delivery: Delivery, due_at: float) -> bool:
        """Create the delivery (``pending``, 0 attempts, ``next_attempt_at = due_at``, no
        claim) and its index entry in ``delivery.index_shard``, due at ``due_at``; False,
        writing nothing, if a delivery of that job and event already exists."""
        ...

    def due(self, shard: int, now: float, limit: int) -> list[DueRef]:
        """Up to ``limit`` index entries of ``shard`` due at ``now`` (due instant, in whole
        ms, at most ``now``), oldest first. Entries may be stale (check the delivery)."""
        ...

    def get(self, job_id: str, event: str) -> Delivery | None:
        """One delivery (strongly consistent), or None."""
        ...

    def claim(self, ref: DueRef, seen: Delivery, token: str, lease_until: float) -> Claim | None:
        """Claim the next attempt of ``seen`` iff the entry ``ref`` still exists and the
        delivery still points at it with ``seen.attempts`` attempts: the delivery becomes
        ``sending`` with one more attempt, claim ``token`` and ``next_attempt_at =
        lease_until``, and its index entry moves to ``lease_until`` (so a dead worker's
        claim is due again once the lease has run out). None if lost; of concurrent claims
        of one entry exactly one wins."""
        ...

    def drop_stale(self, ref: DueRef) -> None:
        """Delete an index entry that no delivery points at any more (unconditional; an
        absent entry is fine)."""
        ...

    def finish(
        self, claim: Claim, attempt: AttemptRecord, state: str, next_at: float | None
    ) -> bool:
        """Commit an attempt's outcome iff the delivery still carries the claim's token:
        sets ``state``, clears the claim, deletes the lease entry, stores ``attempt`` in the
        log (``error`` cut to 1000 characters) and, with ``next_at``, a new index entry due
        then (without it the delivery has no index entry and ``next_attempt_at`` None).
        False, writing nothing, if the claim was lost."""
        ...

    def deliveries(self, job_id: str) -> list[Delivery]:
        """Every delivery of a job, by event."""
        ...

    def attempts(self, job_id: str) -> list[AttemptRecord]:
        """Every attempt of every delivery of a job, by event, then attempt number."""
        ...

    def ping(self) -> None:
        """Raise ``Unavailable`` when the table cannot be reached."""
        ...


class SecretStore(Protocol):
    """Tenant signing secrets (never expire). ``previous`` is stored only together with
    ``previous_until`` (both or neither). ``Unavailable`` when the backend cannot be reached."""

    def get(self, tenant: str) -> SecretRecord | None:
        """The tenant's secrets (strongly consistent), or None."""
        ...

    def create(self, record: SecretRecord) -> bool:
        """Store the first secret of a tenant; False, writing nothing, if the tenant already
        has one. Of concurrent creates exactly one gets True."""
        ...

    def replace(self, record: SecretRecord, expected_version: int) -> bool:
        """Store ``record`` iff the stored version is still ``expected_version``; False if
        it is not, or the tenant has no secret."""
        ...
