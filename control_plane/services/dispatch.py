"""In-memory dispatch of synchronous inference to runners connected to this replica.

Each runner keeps one channel (a WebSocket, ``/v1/runners/{id}/channel``) open to one
control-plane replica and tells it which model versions it serves and how many requests it
takes at once. A synchronous infer call (KServe v2 HTTP/gRPC, ``POST /v1/models/{m}/infer``)
is handed straight to the least-loaded such runner and answered on the same request: no table
write, no lease, no poll. This is how Seldon Core v2's and Ray Serve's routers work.

Semantics are Triton's own, per attempt:
- at most once: a request is sent to one runner once; it is never re-sent by the control plane;
- a runner that disconnects with the request in flight → ``Unavailable`` (503): the caller may
  retry (the SDK does: inference is safe to repeat);
- no free slot on any runner serving the version → wait up to ``queue_wait_s`` in FIFO order
  (at most ``max_waiters`` callers), then ``RateLimited`` (429 with Retry-After);
- no runner connected here for the version → :meth:`Dispatcher.routable` is False and the caller
  takes the durable job path instead (another replica's runners, or Lambda).

Channel frames are JSON text (``gpufleet.channel`` documents them). Everything here runs on the
event loop of the replica; there is no locking.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from control_plane.errors import GpufleetError, RateLimited, Timeout, Unavailable

log = logging.getLogger(__name__)

ModelKey = tuple[str, str]  # (model, version)


class InferenceFailed(GpufleetError):
    """The runner (Triton) refused or failed one inference; ``code`` is the runner's."""

    def __init__(self, code: str, message: str, details: Any = None) -> None:
        super().__init__(message, details)
        self.code = code

    @property
    def client_fault(self) -> bool:
        return self.code in ("invalid_input", "invalid_request", "invalid_argument")


@dataclass(eq=False)
class Channel:
    """One connected runner as the dispatcher sees it."""

    runner_id: str
    send: Callable[[str], Awaitable[None]]
    capacity: int = 1
    models: frozenset[ModelKey] = frozenset()
    inflight: int = 0
    draining: bool = False
    closed: bool = False
    served: int = 0
    pending: dict[int, asyncio.Future[dict[str, Any]]] = field(default_factory=dict)

    @property
    def load(self) -> float:
        return self.inflight / max(1, self.capacity)


class Dispatcher:
    """Routes synchronous inference to connected runners; see the module docstring."""

    def __init__(
        self,
        *,
        queue_wait_s: float = 2.0,
        max_waiters: int = 1024,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.queue_wait_s = queue_wait_s
        self.max_waiters = max_waiters
        self._monotonic = monotonic
        self._channels: set[Channel] = set()
        self._by_model: dict[ModelKey, list[Channel]] = {}
        self._waiters: dict[ModelKey, deque[asyncio.Future[None]]] = {}
        self._ids = itertools.count(1)
        self.on_result: list[Callable[[str, str, str, float], None]] = []

    # ------------------------------------------------------------------ channels
    def attach(self, channel: Channel) -> None:
        self._channels.add(channel)
        self._index()

    def update(
        self,
        channel: Channel,
        models: frozenset[ModelKey],
        capacity: int,
        draining: bool = False,
    ) -> None:
        """What the runner said it serves now (``hello``/``models`` frames)."""
        channel.models = models
        channel.capacity = max(1, capacity)
        channel.draining = draining
        self._index()
        for key in models:
            self._wake(key)

    def detach(self, channel: Channel) -> None:
        """The channel closed: fail its requests in flight with ``Unavailable``."""
        channel.closed = True
        self._channels.discard(channel)
        self._index()
        for fut in channel.pending.values():
            if not fut.done():
                fut.set_exception(
                    Unavailable(f"runner {channel.runner_id} disconnected during the request")
                )
        for key in channel.models:  # waiters re-check: maybe nobody serves it any more
            self._wake(key, all_of_them=True)

    def _index(self) -> None:
        by_model: dict[ModelKey, list[Channel]] = {}
        for ch in self._channels:
            if ch.draining or ch.closed:
                continue
            for key in ch.models:
                by_model.setdefault(key, []).append(ch)
        self._by_model = by_model

    def routable(self, model: str, version: str) -> bool:
        """A runner connected to this replica serves ``model`` ``version``."""
        return bool(self._by_model.get((model, version)))

    def channels(self) -> list[Channel]:
        return list(self._channels)

    # ------------------------------------------------------------------ requests
    def _pick(self, key: ModelKey) -> Channel | None:
        best: Channel | None = None
        for ch in self._by_model.get(key, ()):
            if ch.inflight >= ch.capacity:
                continue
            if best is None or ch.load < best.load:
                best = ch
        return best

    def _wake(self, key: ModelKey, *, all_of_them: bool = False) -> None:
        waiters = self._waiters.get(key)
        while waiters:
            fut = waiters.popleft()
            if not fut.done():
                fut.set_result(None)
                if not all_of_them:
                    return

    async def _slot(self, key: ModelKey, deadline: float) -> Channel:
        """A channel with a free slot, waiting in FIFO order until ``deadline``."""
        ch = self._pick(key)
        if ch is not None:
            return ch
        waiters = self._waiters.setdefault(key, deque())
        if len(waiters) >= self.max_waiters:
            raise RateLimited(f"every runner serving {key[0]!r} is busy", retry_after=1)
        loop = asyncio.get_running_loop()
        while True:
            if not self._by_model.get(key):
                raise Unavailable(f"no runner serves {key[0]!r} version {key[1]} any more")
            left = deadline - self._monotonic()
            if left <= 0:
                raise RateLimited(
                    f"every runner serving {key[0]!r} stayed busy for "
                    f"{self.queue_wait_s:g}s; retry later",
                    retry_after=1,
                )
            fut: asyncio.Future[None] = loop.create_future()
            waiters.append(fut)
            try:
                await asyncio.wait_for(fut, left)
            except asyncio.TimeoutError:
                pass
            finally:
                if not fut.done():
                    fut.cancel()
            ch = self._pick(key)
            if ch is not None:
                # Pass the turn on if more capacity is left for the next waiter.
                if self._pick(key) is not None:
                    self._wake(key)
                return ch

    async def infer(
        self, model: str, version: str, request: dict[str, Any], timeout_s: float
    ) -> dict[str, Any]:
        """Send one inference to a runner and return its ``result`` frame.

        ``request`` holds ``inputs``, ``outputs``, ``parameters`` (JSON-able). Raises
        ``Unavailable`` (runner gone), ``RateLimited`` (all busy), ``Timeout``, or
        ``InferenceFailed`` (the runner's error)."""
        key = (model, version)
        start = self._monotonic()
        deadline = start + timeout_s
        ch = await self._slot(key, min(deadline, start + self.queue_wait_s))
        req_id = next(self._ids)
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        ch.pending[req_id] = fut
        ch.inflight += 1
        frame = json.dumps(
            {
                "type": "infer",
                "id": req_id,
                "model": model,
                "version": version,
                "timeout_s": timeout_s,
                **request,
            },
            separators=(",", ":"),
        )
        outcome = "error"
        try:
            try:
                await ch.send(frame)
            except Exception as exc:
                raise Unavailable(f"runner {ch.runner_id} unreachable: {exc}") from exc
            try:
                msg = await asyncio.wait_for(fut, max(0.0, deadline - self._monotonic()))
            except asyncio.TimeoutError as exc:
                with contextlib.suppress(Exception):
                    await ch.send(json.dumps({"type": "cancel", "id": req_id}))
                raise Timeout(
                    f"inference on {model!r} did not finish within {timeout_s:g}s"
                ) from exc
            if msg.get("type") == "error":
                if msg.get("code") == "unavailable":  # Triton down on that host: retryable
                    raise Unavailable(f"runner {ch.runner_id}: {msg.get('message') or ''}")
                raise InferenceFailed(
                    str(msg.get("code") or "triton_error"), str(msg.get("message") or "")
                )
            outcome = "ok"
            ch.served += 1
            return msg
        finally:
            ch.pending.pop(req_id, None)
            ch.inflight -= 1
            self._wake(key)
            elapsed = self._monotonic() - start
            for hook in self.on_result:
                try:
                    hook(model, ch.runner_id, outcome, elapsed)
                except Exception:
                    log.warning("dispatch hook failed", exc_info=True)

    def resolve(self, channel: Channel, msg: dict[str, Any]) -> None:
        """A ``result``/``error`` frame from the runner: answer the waiting request."""
        fut = channel.pending.get(msg.get("id", -1))
        if fut is not None and not fut.done():
            fut.set_result(msg)
