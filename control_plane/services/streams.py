"""Streamed partial outputs of durable jobs (docs/streaming.md), transport-free.

A runner serving a decoupled model appends each response's outputs as a chunk
(:meth:`StreamService.append`, fenced by the job's lease token like its result); a client
follows the job (:meth:`StreamService.follow`): every stored chunk in ``(attempt, seq)`` order
after the position it last saw, then new ones as they are stored, then the job once it is
terminal. Chunks stay stored after the job ends (``stream_retention_s``), so a client that
connects late or reconnects (``Last-Event-ID``) gets each chunk once, in order.

Ordering against the end: a follower reads the job *before* the chunks. A runner stores every
chunk before it completes the job, and the lease fence refuses chunks once the job is
terminal, so when the job read is terminal the chunk read after it holds every chunk there
will ever be: the stream ends only after the last chunk was sent.

A retried job (lease lost, runner gone) streams again from ``seq`` 0 under its next attempt;
followers see those chunks after the earlier attempt's, with ``attempt`` telling them apart.
Waiting: chunks stored through this replica wake followers at once (``Wakeups``); other
replicas' are seen at the next ``stream_poll_s`` re-read.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from typing import Any

from gpufleet.wire import TERMINAL_STATUSES, ChunksRequest, ChunksResponse, JobView

from control_plane import clock
from control_plane.errors import InvalidRequest, PayloadTooLarge, StaleLease
from control_plane.services.offload import Offload
from control_plane.services.principal import Principal
from control_plane.services.wakeups import Wakeups, job_key, sleep_or_wake
from control_plane.settings import Settings
from control_plane.storage import budget as storage_budget
from control_plane.storage.protocols_streams import ChunkRecord, Position, StreamStore

__all__ = ["ChunkEvent", "EndEvent", "StreamService", "parse_position"]

PAGE = 100
MAX_CHUNK_BYTES = 64 * 1024  # of one chunk's outputs as JSON (one DynamoDB item each)


@dataclass(frozen=True)
class ChunkEvent:
    chunk: ChunkRecord

    @property
    def event_id(self) -> str:
        return f"{self.chunk.attempt}-{self.chunk.seq}"


@dataclass(frozen=True)
class EndEvent:
    job: JobView


def parse_position(raw: str | None, field: str) -> Position | None:
    """``<attempt>-<seq>`` (a chunk event's id) as a position; None for None/empty."""
    if raw is None or not raw.strip():
        return None
    attempt, sep, seq = raw.strip().partition("-")
    if not sep or not attempt.isdigit() or not seq.isdigit():
        raise InvalidRequest(
            f"{field} must be a chunk event id, <attempt>-<seq> (e.g. 1-4)", field=field
        )
    return (int(attempt), int(seq))


class StreamService:
    """Append and follow chunks; ``jobs`` is the job service (visibility, views, wake-ups)."""

    def __init__(
        self,
        settings: Settings,
        store: StreamStore,
        jobs: Any,
        wakeups: Wakeups,
        offload: Offload | None = None,
        monotonic: Any = time.monotonic,
        now: Callable[[], float] = clock.now,
    ) -> None:
        self._settings = settings
        self._store = store
        self._jobs = jobs
        self._wakeups = wakeups
        self._offload = offload or Offload()
        self._monotonic = monotonic
        self._now = now

    # ------------------------------------------------------------------ runner side
    def append(self, runner_id: str, req: ChunksRequest) -> ChunksResponse:
        """Store the chunks of a job the caller holds the lease of; ``StaleLease`` (409) when
        it does not (lost, re-leased, cancelled, finished): the runner stops streaming."""
        chunks: list[tuple[int, list[dict[str, Any]]]] = []
        for i, chunk in enumerate(req.chunks):
            outputs = [t.model_dump(exclude_none=True) for t in chunk.outputs]
            if any(t.get("data_ref") for t in outputs):
                raise InvalidRequest("chunk outputs must be inline", field=f"chunks[{i}].outputs")
            if len(json.dumps(outputs, separators=(",", ":"))) > MAX_CHUNK_BYTES:
                raise PayloadTooLarge(
                    f"chunk {chunk.seq} is over {MAX_CHUNK_BYTES} bytes of outputs",
                    details={"field": f"chunks[{i}].outputs"},
                )
            chunks.append((chunk.seq, outputs))
        t = self._now()
        stored = self._store.append_chunks(
            req.job_id,
            req.lease_token,
            req.attempt,
            chunks,
            t,
            t + self._settings.stream_retention_s,
        )
        if not stored:
            raise StaleLease(
                f"the lease of job {req.job_id} is no longer held (runner {runner_id})"
            )
        self._wakeups.notify(job_key(req.job_id))
        return ChunksResponse(stored=len(chunks))

    # ------------------------------------------------------------------ client side
    async def start(self, p: Principal, job_id: str) -> JobView:
        """The job as GET answers it: raises before a stream starts (404, 403)."""
        view: JobView = await self._offload(self._jobs.get, p, job_id)
        return view

    async def follow(
        self, p: Principal, job_id: str, after: Position | None
    ) -> AsyncGenerator[ChunkEvent | EndEvent | None, None]:
        """The job's chunks after ``after`` in order, then ``EndEvent`` once it is terminal.
        Yields None after each ``stream_keepalive_s`` without news (the transport sends a
        keep-alive). The caller stops whenever it likes (client gone)."""
        last_news = self._monotonic()
        with self._wakeups.watch([job_key(job_id)]) as changed:
            while True:
                changed.clear()  # before the reads: a chunk stored after them wakes us
                storage_budget.renew()  # each round of a stream has its own storage budget
                view: JobView = await self._offload(self._jobs.get, p, job_id)
                chunks = await self._offload(self._store.read_chunks, job_id, after, PAGE)
                for chunk in chunks:
                    yield ChunkEvent(chunk)
                    after = chunk.position
                if chunks:
                    last_news = self._monotonic()
                    continue  # maybe more stored meanwhile: read again before waiting
                if view.status in TERMINAL_STATUSES:
                    yield EndEvent(view)
                    return
                if self._monotonic() - last_news >= self._settings.stream_keepalive_s:
                    last_news = self._monotonic()
                    yield None
                await sleep_or_wake(changed, self._settings.stream_poll_s)
