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

Regions (docs/regions.md): a call may carry a :class:`Placement`: only runners in its
``allowed`` regions take it (none → not routable here, the durable path's lease respects the
same limit), and when a runner in its ``preferred`` region serves the version, only those do
(it waits for one of them rather than spill; a synchronous call has no spill delay to wait).

Two request forms, per call:
- **passthrough** (``RawRequest``): the caller's KServe v2 body, untouched (HTTP JSON or binary
  tensors, or a serialized gRPC ``ModelInferRequest``), goes to the runner in one binary frame;
  the runner hands it to Triton as it is and returns Triton's answer bytes the same way. The
  control plane parses no tensor and Triton validates the request (its 400 names the input):
  what a reverse proxy does, and what keeps a dispatched request within about a millisecond
  of calling Triton directly. Only runners that advertise the protocol (``raw`` in their
  ``hello``) take these.
- **structured** (a JSON-able dict of ``inputs``/``outputs``/``parameters``): v1 tensors,
  validated by the control plane, sent as a JSON text frame; any runner takes these.

Frames are described in ``gpufleet.channel``. Everything here runs on the
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
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from gpufleet._logs import context as log_context
from gpufleet.channel import pack_frame

from control_plane.errors import GpufleetError, RateLimited, Timeout, Unavailable

log = logging.getLogger(__name__)

ModelKey = tuple[str, str]  # (model, version)
PASSTHROUGH_PROTOCOLS = frozenset({"http", "grpc"})


@dataclass(frozen=True)
class RawRequest:
    """A KServe request passed through untouched: ``protocol`` "http" (the HTTP body, JSON or
    with binary tensors; ``meta`` carries the forwarded headers) or "grpc" (a serialized
    ``ModelInferRequest``)."""

    protocol: str
    body: bytes
    meta: dict[str, Any] = field(default_factory=dict)


class InferenceFailed(GpufleetError):
    """The runner (Triton) refused or failed one inference; ``code`` is the runner's."""

    def __init__(self, code: str, message: str, details: Any = None) -> None:
        super().__init__(message, details)
        self.code = code

    @property
    def client_fault(self) -> bool:
        return self.code in ("invalid_input", "invalid_request", "invalid_argument")


@dataclass(frozen=True)
class Placement:
    """Where one synchronous call may run: ``allowed`` regions (empty: any) and the
    ``preferred`` one (None: no preference)."""

    preferred: str | None = None
    allowed: frozenset[str] = frozenset()

    def permits(self, region: str) -> bool:
        return not self.allowed or region in self.allowed


ANYWHERE = Placement()


@dataclass(eq=False)
class Channel:
    """One connected runner as the dispatcher sees it."""

    runner_id: str
    send: Callable[[str | bytes], Awaitable[None]]
    region: str = ""
    capacity: int = 1
    models: frozenset[ModelKey] = frozenset()
    # KServe protocols the runner passes through to Triton as they are ("http", "grpc").
    raw: frozenset[str] = frozenset()
    inflight: int = 0
    draining: bool = False
    closed: bool = False
    served: int = 0
    pending: dict[int, asyncio.Future[dict[str, Any]]] = field(default_factory=dict)
    # Streamed requests (``stream`` frames): their ``chunk`` and final frames, in order.
    streams: dict[int, asyncio.Queue[dict[str, Any]]] = field(default_factory=dict)

    @property
    def load(self) -> float:
        return self.inflight / max(1, self.capacity)


Waiter = tuple["asyncio.Future[Channel]", "str | None", Placement]


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
        # Per version, FIFO: (future granted a channel, the passthrough protocol it needs,
        # the regions it may run in).
        self._waiters: dict[ModelKey, deque[Waiter]] = {}
        self._ids = itertools.count(1)
        self.on_result: list[Callable[[str, str, str, float], None]] = []
        # (model, the runner's stage timings in ms: receive, triton, total) per answer
        self.on_timings: list[Callable[[str, dict[str, Any]], None]] = []
        self._wakes: set[asyncio.Future[None]] = set()

    # ------------------------------------------------------------------ channels
    def attach(self, channel: Channel) -> None:
        self._loop = asyncio.get_running_loop()
        self._channels.add(channel)
        self._index()

    def wake_all(self) -> None:
        """Ask every runner connected here to heartbeat now (a ``wake`` frame): the placement
        changed, so their desired models did. Callable from any thread."""
        loop = getattr(self, "_loop", None)
        if loop is None or loop.is_closed():
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            self._send_wakes()
        else:
            loop.call_soon_threadsafe(self._send_wakes)

    def _send_wakes(self) -> None:
        for ch in list(self._channels):
            if not ch.closed:
                task = asyncio.ensure_future(_send_quietly(ch, '{"type":"wake"}'))
                self._wakes.add(task)
                task.add_done_callback(self._wakes.discard)

    def update(
        self,
        channel: Channel,
        models: frozenset[ModelKey],
        capacity: int,
        draining: bool = False,
        raw: frozenset[str] | None = None,
    ) -> None:
        """What the runner said it serves now (``hello``/``models`` frames)."""
        before = channel.models
        channel.models = models
        channel.capacity = max(1, capacity)
        channel.draining = draining
        if raw is not None:
            channel.raw = raw & PASSTHROUGH_PROTOCOLS
        self._index()
        self._settle(before | models)  # new slots to waiters; waiters of dropped versions fail

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
        for queue in channel.streams.values():
            queue.put_nowait({"type": "closed"})
        self._settle(channel.models)  # waiters fail if nobody serves their version any more

    def _index(self) -> None:
        by_model: dict[ModelKey, list[Channel]] = {}
        for ch in self._channels:
            if ch.draining or ch.closed:
                continue
            for key in ch.models:
                by_model.setdefault(key, []).append(ch)
        self._by_model = by_model

    def routable(
        self, model: str, version: str, raw: str | None = None, where: Placement = ANYWHERE
    ) -> bool:
        """A runner connected to this replica serves ``model`` ``version`` (and, with
        ``raw``, passes that KServe protocol through) in a region ``where`` permits."""
        channels = self._by_model.get((model, version))
        if not channels:
            return False
        return any((raw is None or raw in ch.raw) and where.permits(ch.region) for ch in channels)

    def _narrow(self, key: ModelKey, where: Placement) -> Placement:
        """``where`` restricted to its preferred region when a runner there serves ``key``."""
        pref = where.preferred
        if pref is None or not where.permits(pref):
            return where
        if any(ch.region == pref for ch in self._by_model.get(key, ())):
            return Placement(pref, frozenset({pref}))
        return where

    def channels(self) -> list[Channel]:
        return list(self._channels)

    # ------------------------------------------------------------------ slots
    #
    # A slot is reserved by counting it in ``Channel.inflight`` before the caller runs again:
    # a freed slot is handed to the first waiter directly (``_settle``), so a newcomer never
    # takes it in between, and a newcomer queues behind waiters even when a slot is free.
    # Timeline of one waiter: queued (future in ``_waiters``) → granted (future resolved with
    # the channel, slot counted) → sends; or → expired (429) / failed (503: nobody serves the
    # version) / cancelled (removed; a slot granted meanwhile goes to the next waiter).

    def _pick(
        self, key: ModelKey, raw: str | None = None, where: Placement = ANYWHERE
    ) -> Channel | None:
        best: Channel | None = None
        for ch in self._by_model.get(key, ()):
            if ch.inflight >= ch.capacity or (raw is not None and raw not in ch.raw):
                continue
            if not where.permits(ch.region):
                continue
            # Least loaded; among equals the one that answered least (spreads sequential
            # callers over the runners instead of always the first).
            if best is None or (ch.load, ch.served) < (best.load, best.served):
                best = ch
        return best

    def _settle(self, keys: Iterable[ModelKey]) -> None:
        """Grant free slots to the waiters of ``keys`` in FIFO order; fail the waiters of a
        version no runner here serves any more with ``Unavailable``."""
        for key in keys:
            waiters = self._waiters.get(key)
            if not waiters:
                continue
            if not self._by_model.get(key):
                while waiters:
                    fut, _, _ = waiters.popleft()
                    if not fut.done():
                        fut.set_exception(
                            Unavailable(f"no runner serves {key[0]!r} version {key[1]} any more")
                        )
                continue
            # FIFO; a waiter for a passthrough protocol no free runner speaks lets the ones
            # behind it go first (fleets mix runner versions only while upgrading).
            kept: list[Waiter] = []
            while waiters:
                fut, raw, where = waiters.popleft()
                if fut.done():
                    continue
                if not self.routable(key[0], key[1], raw, where):
                    fut.set_exception(
                        Unavailable(f"no runner in an allowed region serves {key[0]!r} any more")
                    )
                    continue
                ch = self._pick(key, raw, where)
                if ch is None:
                    kept.append((fut, raw, where))
                    if raw is None and where is ANYWHERE:
                        break  # no free slot at all
                    continue
                ch.inflight += 1
                fut.set_result(ch)
            waiters.extendleft(reversed(kept))

    def _release(self, ch: Channel, key: ModelKey) -> None:
        """One request on ``ch`` is over: its slot goes to a waiter of a version ``ch`` serves."""
        ch.inflight -= 1
        if not ch.closed:
            self._settle((key, *ch.models))

    async def _slot(
        self,
        key: ModelKey,
        deadline: float,
        raw: str | None = None,
        where: Placement = ANYWHERE,
    ) -> Channel:
        """A channel with a slot reserved for this request: at once when nobody waits before
        us, else in FIFO order until ``deadline`` (then ``RateLimited``)."""
        if not self.routable(key[0], key[1], raw, where):
            raise Unavailable(f"no runner serves {key[0]!r} version {key[1]} any more")
        where = self._narrow(key, where) if where is not ANYWHERE else where
        waiters = self._waiters.get(key)
        if not waiters:
            ch = self._pick(key, raw, where)
            if ch is not None:
                ch.inflight += 1
                return ch
            if waiters is None:
                waiters = self._waiters[key] = deque()
        if len(waiters) >= self.max_waiters:
            raise RateLimited(f"every runner serving {key[0]!r} is busy", retry_after=1)
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Channel] = loop.create_future()

        def expire() -> None:
            if not fut.done():
                fut.set_exception(
                    RateLimited(
                        f"every runner serving {key[0]!r} stayed busy for "
                        f"{self.queue_wait_s:g}s; retry later",
                        retry_after=1,
                    )
                )

        entry = (fut, raw, where)
        waiters.append(entry)
        timer = loop.call_later(max(0.0, deadline - self._monotonic()), expire)
        try:
            return await fut
        except BaseException:
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                self._release(fut.result(), key)  # granted, but the caller went away
            raise
        finally:
            timer.cancel()
            if entry in waiters:
                waiters.remove(entry)

    # ------------------------------------------------------------------ requests
    async def infer(
        self,
        model: str,
        version: str,
        request: dict[str, Any] | RawRequest,
        timeout_s: float,
        where: Placement = ANYWHERE,
    ) -> dict[str, Any]:
        """Send one inference to a runner and return its ``result`` frame.

        ``request``: a structured request (``inputs``, ``outputs``, ``parameters``, JSON-able)
        or a :class:`RawRequest` passed through (then the result's ``body`` holds Triton's
        answer bytes). Raises ``Unavailable`` (runner gone), ``RateLimited`` (all busy),
        ``Timeout``, or ``InferenceFailed`` (the runner's or Triton's error)."""
        key = (model, version)
        raw = request if isinstance(request, RawRequest) else None
        start = self._monotonic()
        deadline = start + timeout_s
        ch = await self._slot(
            key, min(deadline, start + self.queue_wait_s), raw.protocol if raw else None, where
        )
        req_id = next(self._ids)
        loop = asyncio.get_running_loop()  # once: on CPython 3.11 each call is a getpid()
        fut: asyncio.Future[dict[str, Any]] = loop.create_future()
        ch.pending[req_id] = fut
        head = {
            "type": "infer",
            "id": req_id,
            "model": model,
            "version": version,
            "timeout_s": timeout_s,
        }
        request_id = log_context["request_id"].get()
        if request_id:  # the runner's lines about this request carry it
            head["request_id"] = request_id
        frame: str | bytes
        if isinstance(request, RawRequest):
            frame = pack_frame({**head, "protocol": request.protocol, **request.meta}, request.body)
        else:
            frame = json.dumps({**head, **request}, separators=(",", ":"))
        outcome = "error"
        try:
            try:
                await ch.send(frame)
            except Exception as exc:
                raise Unavailable(f"runner {ch.runner_id} unreachable: {exc}") from exc
            # one timer that fails the future, not wait_for (a task) or asyncio.timeout
            timer = loop.call_later(max(0.0, deadline - self._monotonic()), _time_out, fut)
            try:
                msg = await fut
            except TimeoutError as exc:
                with contextlib.suppress(Exception):
                    await ch.send(json.dumps({"type": "cancel", "id": req_id}))
                raise Timeout(
                    f"inference on {model!r} did not finish within {timeout_s:g}s"
                ) from exc
            finally:
                timer.cancel()
            if msg.get("type") == "error":
                if msg.get("code") == "unavailable":  # Triton down on that host: retryable
                    raise Unavailable(f"runner {ch.runner_id}: {msg.get('message') or ''}")
                raise InferenceFailed(
                    str(msg.get("code") or "triton_error"), str(msg.get("message") or "")
                )
            outcome = "ok"
            ch.served += 1
            timings = msg.get("timings")
            if isinstance(timings, dict):
                for stage_hook in self.on_timings:
                    try:
                        stage_hook(model, timings)
                    except Exception:
                        log.warning("dispatch timings hook failed", exc_info=True)
            return msg
        finally:
            ch.pending.pop(req_id, None)
            self._release(ch, key)
            elapsed = self._monotonic() - start
            for hook in self.on_result:
                try:
                    hook(model, ch.runner_id, outcome, elapsed)
                except Exception:
                    log.warning("dispatch hook failed", exc_info=True)

    async def stream(
        self,
        model: str,
        version: str,
        request: dict[str, Any],
        timeout_s: float,
    ) -> AsyncGenerator[dict[str, Any], None]:
        """Send one streamed inference (a ``stream`` frame: ``inputs``, ``outputs``,
        ``parameters``) to a runner and yield its ``chunk`` frames as they arrive, until its
        final ``result``. Raises like :meth:`infer` (``Unavailable`` when the runner goes,
        ``Timeout`` after ``timeout_s`` in all, ``InferenceFailed``). Leaving the iteration
        early (the caller hung up) sends ``cancel``: the runner cancels the Triton request.
        Use it under ``contextlib.aclosing`` so that happens at once."""
        key = (model, version)
        start = self._monotonic()
        deadline = start + timeout_s
        ch = await self._slot(key, min(deadline, start + self.queue_wait_s))
        req_id = next(self._ids)
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        ch.streams[req_id] = queue
        head = {"type": "stream", "id": req_id, "model": model, "version": version}
        frame = json.dumps({**head, "timeout_s": timeout_s, **request}, separators=(",", ":"))
        finished = False
        outcome = "error"
        try:
            try:
                await ch.send(frame)
            except Exception as exc:
                finished = True
                raise Unavailable(f"runner {ch.runner_id} unreachable: {exc}") from exc
            while True:
                try:
                    msg = await asyncio.wait_for(
                        queue.get(), max(0.0, deadline - self._monotonic())
                    )
                except TimeoutError as exc:
                    raise Timeout(
                        f"streamed inference on {model!r} did not finish within {timeout_s:g}s"
                    ) from exc
                kind = msg.get("type")
                if kind == "chunk":
                    yield msg
                    continue
                finished = True
                if kind == "closed":
                    raise Unavailable(f"runner {ch.runner_id} disconnected during the stream")
                if kind == "error":
                    if msg.get("code") == "unavailable":
                        raise Unavailable(f"runner {ch.runner_id}: {msg.get('message') or ''}")
                    raise InferenceFailed(
                        str(msg.get("code") or "triton_error"), str(msg.get("message") or "")
                    )
                outcome = "ok"
                ch.served += 1
                return
        finally:
            ch.streams.pop(req_id, None)
            if not finished and not ch.closed:
                with contextlib.suppress(Exception):
                    await ch.send(json.dumps({"type": "cancel", "id": req_id}))
            self._release(ch, key)
            for hook in self.on_result:
                try:
                    hook(model, ch.runner_id, outcome, self._monotonic() - start)
                except Exception:
                    log.warning("dispatch hook failed", exc_info=True)

    def resolve(self, channel: Channel, msg: dict[str, Any]) -> None:
        """A ``result``/``error``/``chunk`` frame from the runner: answer the waiting request
        (a streamed one gets every frame in order)."""
        queue = channel.streams.get(msg.get("id", -1))
        if queue is not None:
            queue.put_nowait(msg)
            return
        fut = channel.pending.get(msg.get("id", -1))
        if fut is not None and not fut.done():
            fut.set_result(msg)


def _time_out(fut: asyncio.Future[Any]) -> None:
    if not fut.done():
        fut.set_exception(TimeoutError())


async def _send_quietly(ch: Channel, frame: str) -> None:
    """A frame nobody waits an answer for (a channel closing meanwhile drops it)."""
    with contextlib.suppress(Exception):
        await ch.send(frame)
