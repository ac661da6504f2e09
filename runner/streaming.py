"""Streamed jobs: a decoupled model's responses sent to the control plane as they come.

A job on a model whose config says ``model_transaction_policy { decoupled: true }`` runs over
Triton's streaming RPC (``engine.infer_stream``). Each response becomes a chunk
(``seq`` 0, 1, … within the job's attempt) that :class:`ChunkSender` stores at the control
plane (``POST /v1/runners/{id}/chunks``, or the channel's ``chunks`` frame) while the model
goes on: one call at a time, carrying every chunk produced while the previous call ran, so a
fast model costs a few calls and a slow one gets each chunk out at once. Every chunk is
stored before the job is completed (:meth:`ChunkSender.drain`), so a client following the job
sees all chunks before its end.

A refused chunk (409: the job was cancelled, or the lease is lost) stops the job: its task is
cancelled, which cancels the request in Triton (the model stops generating). The job's result
is every response's outputs joined along the first dimension (the tokens of the whole
generation), or the last response's where shapes do not join.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable

from gpufleet.wire import MAX_STREAM_CHUNKS, ChunksRequest, StreamChunk, Tensor

from runner.cp_client import Conflict, ControlPlaneClient, ControlPlaneError, NotFound

log = logging.getLogger(__name__)


class ChunkSender:
    """Sends one job's chunks in order; see the module docstring."""

    def __init__(
        self,
        client: ControlPlaneClient,
        job_id: str,
        lease_token: str,
        attempt: int,
        on_refused: Callable[[], None],
    ) -> None:
        self._client = client
        self._job_id = job_id
        self._token = lease_token
        self._attempt = attempt
        self._on_refused = on_refused
        self._pending: list[StreamChunk] = []
        self._seq = 0
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task[None] | None = None
        self.stored = 0
        self.calls = 0
        self.dropped = False  # a control plane without streaming: chunks are not kept

    def add(self, outputs: list[Tensor]) -> None:
        """Queue the outputs of the next response (never waits)."""
        if self.dropped:
            return
        self._pending.append(StreamChunk.model_construct(seq=self._seq, outputs=outputs))
        self._seq += 1
        self._idle.clear()
        self._wake.set()
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"chunks-{self._job_id}")

    async def drain(self, timeout_s: float) -> None:
        """Return once every queued chunk is stored (or dropped); TimeoutError after
        ``timeout_s``."""
        await asyncio.wait_for(self._idle.wait(), timeout_s)

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        delay = 0.2
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending:
                batch = self._pending[:MAX_STREAM_CHUNKS]
                req = ChunksRequest.model_construct(
                    api_version="v1",
                    job_id=self._job_id,
                    lease_token=self._token,
                    attempt=self._attempt,
                    chunks=batch,
                )
                self.calls += 1
                try:
                    await self._client.append_chunks(req)
                except Conflict as exc:
                    log.info("job %s: chunk refused (%s): stopping it", self._job_id, exc)
                    self._pending.clear()
                    self._idle.set()
                    self._on_refused()
                    return
                except NotFound:
                    log.warning("job %s: the control plane keeps no streams", self._job_id)
                    self.dropped = True
                    self._pending.clear()
                    break
                except ControlPlaneError as exc:
                    log.warning("job %s: storing chunks failed (%s); retrying", self._job_id, exc)
                    await asyncio.sleep(delay * (0.5 + random.random()))
                    delay = min(delay * 2, 5.0)
                    continue
                delay = 0.2
                del self._pending[: len(batch)]
                self.stored += len(batch)
            self._idle.set()


def join_responses(responses: list[list[Tensor]]) -> list[Tensor]:
    """The job's outputs: per output name, every response's data joined along the first
    dimension (same datatype and inner dims), else the last response's tensor."""
    if not responses:
        return []
    names = list(dict.fromkeys(t.name for r in responses for t in r))
    joined: list[Tensor] = []
    for name in names:
        parts = [t for r in responses for t in r if t.name == name]
        first = parts[0]
        same = all(
            p.datatype == first.datatype
            and len(p.shape) == len(first.shape) >= 1
            and p.shape[1:] == first.shape[1:]
            and p.data is not None
            for p in parts
        )
        if not same:
            joined.append(parts[-1])
            continue
        data = [x for p in parts for x in (p.data or [])]
        shape = [sum(p.shape[0] for p in parts), *first.shape[1:]]
        joined.append(Tensor(name=name, datatype=first.datatype, shape=shape, data=data))
    return joined
