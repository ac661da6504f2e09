"""Frames of the runner's dispatch channel (``/v1/runners/{id}/channel``, a WebSocket).

Shared by the control plane (``control_plane/api/routes_channel.py``,
``services/dispatch.py``) and the runner (``runner/channel.py``). Frames are JSON text
objects with a ``type``, or binary for passthrough requests: two 4-byte big-endian lengths
(of a JSON header object and of the body), the header, then the raw KServe bytes (an HTTP body
or a serialized gRPC ``ModelInferRequest``/``ModelInferResponse``); one binary message may hold
several such frames back to back::

    runner → control plane   hello / models {models: [{name, version}], capacity, draining,
                                             raw: ["grpc", "http"] (protocols passed through)}
                             lease {rid, body: LeaseRequest}
                             complete {rid, body: BatchCompleteRequest}
                             chunks {rid, body: ChunksRequest}  (a streamed job's outputs)
                             chunk {id, outputs}  (one response of a ``stream`` request;
                                                   its ``result``/``error`` ends it)
                             result {id, outputs, timings, runner_id}
                             error {id, code, message, runner_id}
                             binary result {id, timings, runner_id, header_length?,
                                            content_type?} + Triton's answer bytes
    control plane → runner   infer {id, model, version, inputs, outputs, parameters, timeout_s}
                             binary infer {id, model, version, timeout_s, protocol: http|grpc,
                                           header_length?, content_type?} + the caller's body
                             stream {id, model, version, inputs, outputs, parameters,
                                     timeout_s}  (decoupled models: many responses)
                             cancel {id}  (also ends a ``stream``: Triton cancels it)
                             wake {}  (the placement changed: heartbeat now)
                             reply {rid, status, body | error}  (to lease / complete)

``lease``, ``complete`` and ``chunks`` are the job protocol's HTTP calls
(``POST /v1/runners/{id}/lease``, ``…/complete``, ``…/chunks``) carried by the channel while
it is open: same bodies, same answers (``status`` is the HTTP status the route would give), no
per-call signature (the channel was authenticated when it opened and is closed when the runner
is revoked). When the channel is closed the runner makes the same calls over HTTP.
"""

from __future__ import annotations

import asyncio
import json
import struct
from collections.abc import Awaitable, Callable
from typing import Any

__all__ = ["Outbox", "pack_frame", "unpack_frame", "unpack_frames"]

_LENGTHS = struct.Struct(">II")


def pack_frame(header: dict[str, Any], body: bytes = b"") -> bytes:
    """A binary frame: the lengths of the JSON ``header`` and of ``body`` (two big-endian
    u32), the header, the body. Frames are self-delimiting: one binary WebSocket message
    may carry several back to back (:class:`Outbox` sends them so)."""
    head = json.dumps(header, separators=(",", ":")).encode()
    return b"".join((_LENGTHS.pack(len(head), len(body)), head, body))


def unpack_frames(data: bytes) -> list[tuple[dict[str, Any], bytes]]:
    """Every ``(header, body)`` of a binary message; ValueError when malformed."""
    frames = []
    view = memoryview(data)
    at = 0
    while at < len(data):
        if len(data) - at < _LENGTHS.size:
            raise ValueError("binary frame shorter than its length prefix")
        head_len, body_len = _LENGTHS.unpack_from(data, at)
        start = at + _LENGTHS.size
        end = start + head_len + body_len
        if end > len(data):
            raise ValueError("binary frame runs past the message")
        header = json.loads(view[start : start + head_len].tobytes())
        if not isinstance(header, dict):
            raise ValueError("binary frame header is not a JSON object")
        frames.append((header, bytes(view[start + head_len : end])))
        at = end
    if not frames:
        raise ValueError("empty binary message")
    return frames


def unpack_frame(data: bytes) -> tuple[dict[str, Any], bytes]:
    """The one ``(header, body)`` of a binary message holding a single frame."""
    frames = unpack_frames(data)
    if len(frames) != 1:
        raise ValueError(f"expected one binary frame, found {len(frames)}")
    return frames[0]


class Outbox:
    """Writes frames to one WebSocket in order, binary frames queued meanwhile coalesced
    into one message: under load many requests (or answers) become ready in the same
    event-loop turn, and each costs a WebSocket message and a socket write otherwise.

    ``await send(frame)`` returns once the message holding it is written and raises what
    writing it raised (the caller treats that as a broken channel)."""

    def __init__(
        self,
        send_text: Callable[[str], Awaitable[None]],
        send_bytes: Callable[[bytes], Awaitable[None]],
        max_bytes: int = 1 << 20,
    ) -> None:
        self._send_text = send_text
        self._send_bytes = send_bytes
        self._max_bytes = max_bytes  # a bigger batch is split (the first frame always goes)
        self._queue: list[tuple[str | bytes, asyncio.Future[None]]] = []
        self._writer: asyncio.Task[None] | None = None

    async def send(self, frame: str | bytes) -> None:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.append((frame, fut))
        if self._writer is None:
            self._writer = asyncio.get_running_loop().create_task(self._write())
        await fut

    async def _write(self) -> None:
        try:
            while self._queue:
                await asyncio.sleep(0)  # let the other frames of this turn join the batch
                batch, self._queue = self._queue, []
                while batch:
                    frame, fut = batch.pop(0)
                    waiters = [fut]
                    try:
                        if isinstance(frame, str):
                            await self._send_text(frame)
                        else:
                            parts, size = [frame], len(frame)
                            while (
                                batch
                                and isinstance(batch[0][0], bytes)
                                and size + len(batch[0][0]) <= self._max_bytes
                            ):
                                more, more_fut = batch.pop(0)
                                assert isinstance(more, bytes)
                                parts.append(more)
                                waiters.append(more_fut)
                                size += len(more)
                            await self._send_bytes(b"".join(parts) if len(parts) > 1 else frame)
                    except BaseException as exc:
                        for w in waiters:
                            if not w.done():
                                w.set_exception(
                                    exc
                                    if isinstance(exc, Exception)
                                    else ConnectionError("channel writer cancelled")
                                )
                        if not isinstance(exc, Exception):
                            for _, rest in batch + self._queue:
                                if not rest.done():
                                    rest.set_exception(ConnectionError("channel writer cancelled"))
                            self._queue = []
                            raise
                        continue
                    for w in waiters:
                        if not w.done():
                            w.set_result(None)
        finally:
            self._writer = None
