"""Key formats of the queue, the lease-expiry index and the queue-TTL index.

Both queue adapters (``dynamo_queue.py``; ``sqlite/queue.py``, whose tables mirror the
DynamoDB layout) use these formats; services never see them. They hand typed values to the
store's ``QueueKeys`` (``QueueStore.keys``) and pass the keys they get back unchanged.

- queue shard   ``<model>#<n>``
- queue sk      ``<999-priority:03d>#<created_ms:013d>#<job_id>``: ascending order is strict
                priority first (100 sorts before 0), then FIFO by creation time, so the sks of
                every shard of a model compare in claim order
- lease marker  shard ``lease#<n>``, sk ``<expires_ms:013d>#<job_id>``
- TTL marker    shard ``ttl#<n>``,   sk ``<deadline_ms:013d>#<job_id>``

Markers are read only when due (``sk < <now_ms:013d>``), so a sweep's cost follows what is due,
not what is stored.
"""

from __future__ import annotations

from control_plane.storage.protocols import Marker, QueueEntry

LEASE_PREFIX = "lease#"
TTL_PREFIX = "ttl#"


def ms(ts: float) -> int:
    """Seconds -> integer milliseconds."""
    return int(ts * 1000)


def queue_shard(model: str, n: int) -> str:
    return f"{model}#{n}"


def queue_sk(priority: int, created_at: float, job_id: str) -> str:
    return f"{999 - priority:03d}#{ms(created_at):013d}#{job_id}"


def due_before(now: float) -> str:
    """Upper bound (exclusive) of the sks of markers due at ``now``."""
    return f"{ms(now):013d}"


def read_entry(
    shard: str,
    sk: str,
    job_id: str,
    version: str,
    region: str,
    ttl_deadline: float,
    token: str,
    timeout_s: int,
    tenant: str = "",
) -> QueueEntry:
    """A stored entry with its typed fields parsed back from its keys."""
    model, _, n = shard.rpartition("#")
    priority, created_ms, _ = sk.split("#", 2)
    return QueueEntry(
        shard=shard,
        sk=sk,
        job_id=job_id,
        version=version,
        region=region,
        ttl_deadline=ttl_deadline,
        token=token,
        timeout_s=timeout_s,
        model=model,
        shard_number=int(n),
        priority=999 - int(priority),
        created_at=int(created_ms) / 1000,
        tenant=tenant,
    )


class QueueKeyFormat:
    """``QueueKeys`` of both queue adapters (the formats in the module docstring)."""

    # (the module's helpers inlined below: these run several times per job)
    def queue_shard(self, model: str, n: int) -> str:
        return f"{model}#{n}"

    def shard_number(self, shard: str) -> int:
        return int(shard.rpartition("#")[2])

    def entry(
        self,
        *,
        model: str,
        shard_number: int,
        job_id: str,
        priority: int,
        created_at: float,
        version: str,
        region: str,
        ttl_deadline: float,
        token: str,
        timeout_s: int,
        tenant: str = "",
    ) -> QueueEntry:
        return read_entry(
            f"{model}#{shard_number}",
            f"{999 - priority:03d}#{int(created_at * 1000):013d}#{job_id}",
            job_id,
            version,
            region,
            ttl_deadline,
            token,
            timeout_s,
            tenant,
        )

    def lease_shard(self, n: int) -> str:
        return f"{LEASE_PREFIX}{n}"

    def ttl_shard(self, n: int) -> str:
        return f"{TTL_PREFIX}{n}"

    def lease_marker(self, n: int, job_id: str, expires_at: float, token: str) -> Marker:
        sk = f"{int(expires_at * 1000):013d}#{job_id}"
        return Marker(f"{LEASE_PREFIX}{n}", sk, job_id, token)

    def ttl_marker(self, n: int, job_id: str, deadline: float) -> Marker:
        return Marker(f"{TTL_PREFIX}{n}", f"{int(deadline * 1000):013d}#{job_id}", job_id)

    def due_bound(self, now: float) -> str:
        return due_before(now)


QUEUE_KEYS = QueueKeyFormat()
