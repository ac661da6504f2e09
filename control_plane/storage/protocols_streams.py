"""Records and store protocol of streamed partial outputs (issue 11, "Streaming outputs").

A durable job on a decoupled model produces its outputs as a sequence of chunks (one per
Triton response). The runner appends them while the job runs; ``GET /v1/jobs/{id}/stream``
reads them back in order, from the start or after the last one a client saw. Chunks are
kept after the job is terminal, until ``expires_at`` (so a client that connects late still
gets every chunk); the backend deletes expired ones (DynamoDB TTL; SQLite purges a few per
append).

Two implementations, held to one contract suite (``tests/contract/test_stream_stores.py``):
``dynamo_streams.py`` (table ``streams``) and ``sqlite/streams.py``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

# A chunk's position: (attempt, seq). Attempts restart ``seq`` at 0; ordering is by attempt
# first, so the chunks of a retried job follow those of the attempt before.
Position = tuple[int, int]

MAX_CHUNKS_PER_APPEND = 64  # one DynamoDB transaction holds the lease check + 99 writes


@dataclass(frozen=True)
class ChunkRecord:
    """One partial output of a job: the output tensors of one model response."""

    job_id: str
    attempt: int
    seq: int
    outputs: list[dict[str, Any]]
    created_at: float

    @property
    def position(self) -> Position:
        return (self.attempt, self.seq)


class StreamStore(Protocol):
    """Chunks of durable jobs. Errors as every store: ``Unavailable`` when the backend
    cannot be reached."""

    def append_chunks(
        self,
        job_id: str,
        lease_token: str,
        attempt: int,
        chunks: list[tuple[int, list[dict[str, Any]]]],
        now: float,
        expires_at: float,
    ) -> bool:
        """Store ``chunks`` (``(seq, outputs)``, at most ``MAX_CHUNKS_PER_APPEND``) of
        ``attempt`` iff the job is RUNNING with ``lease_token``, checked atomically with the
        writes: the lease token fences chunks like results, so a runner whose lease was lost
        or whose job was cancelled stores nothing. Returns False then (nothing stored).

        Idempotent: a chunk stored again at the same ``(attempt, seq)`` replaces the first
        (a retried call after a lost answer). ``expires_at``: when the chunks may be
        deleted (Unix seconds)."""
        ...

    def read_chunks(self, job_id: str, after: Position | None, limit: int) -> list[ChunkRecord]:
        """Up to ``limit`` chunks of ``job_id`` positioned after ``after`` (all when None),
        in ``(attempt, seq)`` order. Strongly consistent: every append that returned before
        the read is in it. Expired chunks may still be returned until the backend deletes
        them."""
        ...

    def ping(self) -> None:
        """Raises ``Unavailable`` when the backend cannot be reached."""
        ...
