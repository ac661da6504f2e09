"""Key formats of the queue, the lease-expiry index and the queue-TTL index.

- queue shard   ``<model>#<n>``                      n in ``[0, queue_shards)``, random per job
- queue sk      ``<999-priority:03d>#<created_ms:013d>#<job_id>``: ascending order is strict
                priority first (100 sorts before 0), then FIFO by creation time
- lease marker  shard ``lease#<n>``, sk ``<expires_ms:013d>#<job_id>``
- TTL marker    shard ``ttl#<n>``,   sk ``<deadline_ms:013d>#<job_id>``

Markers live in the ``leases`` table; a sweep reads only the markers whose instant has passed
(``sk < <now_ms:013d>``), so its cost follows what is due, not what is stored.
"""

from __future__ import annotations

import hashlib


def ms(ts: float) -> int:
    """Seconds -> integer milliseconds."""
    return int(ts * 1000)


def queue_shard(model: str, n: int) -> str:
    return f"{model}#{n}"


def queue_sk(priority: int, created_at: float, job_id: str) -> str:
    return f"{999 - priority:03d}#{ms(created_at):013d}#{job_id}"


def stable_shard(job_id: str, shards: int) -> int:
    """A shard picked from the job id (so any replica finds the same one)."""
    return int.from_bytes(hashlib.sha256(job_id.encode()).digest()[:4], "big") % shards


def lease_marker(job_id: str, expires_at: float, shards: int) -> tuple[str, str]:
    return f"lease#{stable_shard(job_id, shards)}", f"{ms(expires_at):013d}#{job_id}"


def ttl_marker(job_id: str, deadline: float, shards: int) -> tuple[str, str]:
    return f"ttl#{stable_shard(job_id, shards)}", f"{ms(deadline):013d}#{job_id}"


def due_before(now: float) -> str:
    """Upper bound (exclusive) of the sks of markers due at ``now``."""
    return f"{ms(now):013d}"
