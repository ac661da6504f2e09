"""A small gRPC server (HTTP/2 over TCP, cleartext or TLS with ALPN h2; unary calls) on the
event loop: what the control plane's KServe gRPC port runs (``kserve_grpc.py``) unless
``grpc_server=grpcio``.

grpcio's aio server spends ~0.5 ms of CPU per unary call before any handler runs (its
completion-queue poller thread wakes the event loop through a socket for each event, and
each call builds a task, a context and several Cython objects); on a 2-core host that is as
much as the rest of a passed-through inference. Here each connection is an asyncio protocol:
frames parsed as they come, a call's answer (headers, message, trailers) leaves in one
``write``, one task per call runs its handler.

Handlers are grpc.aio's servicer methods, unchanged: ``await handler(request, context)``
(a handler may answer the serialized response as ``bytes``)
with a context (:class:`CallContext`) that has what they use of ``grpc.aio.ServicerContext``:
``invocation_metadata()``, ``set_trailing_metadata()``, ``abort()``, ``peer()``,
``time_remaining()``.

What it does of HTTP/2 and gRPC (RFC 9113, gRPC over HTTP2):
- the server preface (SETTINGS: no dynamic HPACK table, so a client's repeated header
  blocks mean the same and are decoded once), ACKs, PING answered, the client's SETTINGS
  applied, flow control both ways (windows given back as requests are read, a large answer
  waits for WINDOW_UPDATE), CONTINUATION, padding, RST_STREAM (cancels the call's handler),
  GOAWAY both ways;
- requests: ``grpc-timeout`` (the handler is cancelled at the deadline: DEADLINE_EXCEEDED
  "Deadline Exceeded"), ``grpc-encoding`` gzip / deflate messages inflated, a message over
  ``max_receive`` refused with RESOURCE_EXHAUSTED as grpc words it, metadata (``-bin`` keys
  base64-decoded to bytes) as grpc.aio gives it;
- limits for a public port (review-grpc_h2.md; all before any handler runs): frames of 16 KiB,
  header blocks of 16 KiB (SETTINGS_MAX_HEADER_LIST_SIZE), 100 streams, request bytes bounded
  per connection by the windows we grant (a pool of 2 * max_receive, inflated bodies
  included, given back as calls end; DATA past a window is FLOW_CONTROL_ERROR), reading paused
  while the transport's write buffer is full, rapid reset and empty-DATA floods answered
  GOAWAY ENHANCE_YOUR_CALM, timers for a missing preface, idle connections, requests never
  completed and answers stalled on the client's window past their deadline; SETTINGS,
  WINDOW_UPDATE, PING, RST_STREAM and padding checked as RFC 9113 says;
- answers never compressed; statuses and percent-encoded messages in trailers (trailers-only
  for an error); an unknown method: UNIMPLEMENTED "Method not found!"; streaming methods run
  their handler with no request messages (gpufleet's answer UNIMPLEMENTED at once).

    server = GrpcH2Server(handlers, max_receive=64 << 20)
    port = await server.start("127.0.0.1", 8001)
    ...
    await server.stop(grace_s=5.0)
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import socket
import ssl
import struct
import zlib
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import grpc
import hpack
from gpufleet._h2 import (
    ACK,
    CONTINUATION,
    DATA,
    DEFAULT_WINDOW,
    E_CANCEL,
    E_ENHANCE_YOUR_CALM,
    E_FLOW_CONTROL,
    E_FRAME_SIZE,
    E_NO_ERROR,
    E_PROTOCOL_ERROR,
    END_HEADERS,
    END_STREAM,
    GOAWAY,
    HEADERS,
    MAX_FRAME,
    MAX_WINDOW,
    PADDED,
    PING,
    PREFACE,
    PRIORITY_FLAG,
    PUSH_PROMISE,
    RST_STREAM,
    S_HEADER_TABLE_SIZE,
    S_INITIAL_WINDOW_SIZE,
    S_MAX_CONCURRENT_STREAMS,
    S_MAX_FRAME_SIZE,
    S_MAX_HEADER_LIST_SIZE,
    SETTINGS,
    WINDOW_UPDATE,
    BlockCache,
    H2Error,
    check_settings,
)
from gpufleet._h2 import HEAD as _HEAD
from gpufleet._h2 import U32 as _U32
from gpufleet._h2 import frame as _frame
from gpufleet._h2 import hpack_int as _hpack_int
from gpufleet._h2 import literal as _literal

__all__ = ["CallContext", "GrpcH2Server", "Method"]

log = logging.getLogger(__name__)

# Receiving (review B3): a stream may send RECEIVE_WINDOW bytes unasked; once its message's
# 5-byte prefix says how long it is, the rest is granted (one WINDOW_UPDATE) from the
# connection's pool of 2 * (max_receive + 5) bytes, or the stream waits until calls in flight
# give theirs back (at their answer). The connection window is that pool plus
# MAX_STREAMS * RECEIVE_WINDOW: a client that sends past a window is cut off
# (FLOW_CONTROL_ERROR), so a connection holds at most ~2 max-size requests (inflated ones
# count) plus 6 MiB, where it held 1000 * max_receive before.
RECEIVE_WINDOW = DEFAULT_WINDOW
# nghttp2's default and RFC 9113's recommended minimum (§6.5.2)
MAX_STREAMS = 100
# abuse limits per connection and CALM_WINDOW_S seconds, past which GOAWAY ENHANCE_YOUR_CALM:
# empty DATA frames that do not end a stream (CVE-2019-9518)
CALM_WINDOW_S = 10.0
MAX_EMPTY_DATA = 1000
# client resets of unanswered streams: a token bucket (nghttp2's stream reset rate limit:
# a burst of 1000, then ~33 per second), so an honest client that cancels calls now and
# then is never sent away, and a rapid-reset loop is sent away within its first thousand
RESET_BURST = 1000.0
RESET_RATE = 33.0
MAX_SETTINGS = 32
# decoded header blocks kept per connection (a client's few distinct call heads)
MAX_CACHED_BLOCKS = 32
# a request's header block (HEADERS + CONTINUATIONs) and its decoded header list: grpc-core's
# hard metadata limit; announced as SETTINGS_MAX_HEADER_LIST_SIZE
MAX_HEADER_BLOCK = 16384
_RESERVED = frozenset(
    {b"content-type", b"te", b"grpc-timeout", b"grpc-encoding", b"grpc-accept-encoding"}
)
_TIMEOUT_UNITS = {b"H": 3600.0, b"M": 60.0, b"S": 1.0, b"m": 1e-3, b"u": 1e-6, b"n": 1e-9}
# grpc-message: percent-encode everything outside printable ASCII, and '%' itself
_MESSAGE_SAFE = "".join(chr(c) for c in range(0x20, 0x7F) if chr(c) != "%")


def check_window_update(payload: bytes) -> int:
    """A WINDOW_UPDATE's increment (H2Error for a bad length or an increment of 0)."""
    if len(payload) != 4:
        raise H2Error(E_FRAME_SIZE, f"WINDOW_UPDATE of {len(payload)} bytes")
    increment: int = _U32.unpack(payload)[0] & MAX_WINDOW
    if increment == 0:
        raise H2Error(E_PROTOCOL_ERROR, "WINDOW_UPDATE of 0")
    return increment


def check_size_updates(block: bytes) -> None:
    """At most two dynamic-table size updates, at the start of a header block (RFC 7541
    §4.2): a block of thousands of them costs pure-Python HPACK milliseconds per KiB and
    adds nothing to the header list's size."""
    i = count = 0
    while i < len(block) and 0x20 <= block[i] <= 0x3F:
        count += 1
        if count > 2:
            raise H2Error(0x9, "more than two HPACK table size updates")  # COMPRESSION_ERROR
        if block[i] & 0x1F == 0x1F:
            i += 1
            while i < len(block) and block[i] & 0x80:
                i += 1
        i += 1


_RESPONSE_HEAD = b"\x88" + _literal(31, b"application/grpc")  # :status 200, content-type
_OK_TRAILER = _literal(b"grpc-status", b"0")


# a metadata key's HPACK literal name (and whether its value is binary), by key: servicers
# answer the same few keys call after call
_KEY_LITERALS: dict[str, tuple[bytes, bool]] = {}


def _metadata_block(pairs: Iterable[tuple[str, str | bytes]]) -> bytes:
    out = []
    for key, value in pairs:
        known = _KEY_LITERALS.get(key)
        if known is None:
            k = key.lower().encode("ascii", "replace")
            known = (b"\x00" + _hpack_int(len(k), 7, 0) + k, k.endswith(b"-bin"))
            if len(_KEY_LITERALS) < 256:
                _KEY_LITERALS[key] = known
        name, binary = known
        if binary:
            raw = value if isinstance(value, bytes) else value.encode()
            v = base64.b64encode(raw).rstrip(b"=")
        else:
            v = value.encode("ascii", "replace") if isinstance(value, str) else value
        out.append(name + _hpack_int(len(v), 7, 0) + v)
    return b"".join(out)


def _status_block(code: int, message: str, trailing: Iterable[tuple[str, str | bytes]]) -> bytes:
    block = _OK_TRAILER if code == 0 else _literal(b"grpc-status", b"%d" % code)
    if message:
        block += _literal(b"grpc-message", quote(message, safe=_MESSAGE_SAFE).encode("ascii"))
    return block + _metadata_block(trailing)


def parse_timeout(value: bytes) -> float | None:
    """Seconds of a ``grpc-timeout`` value (``10S``, ``100m``); None when malformed."""
    unit = _TIMEOUT_UNITS.get(value[-1:])
    digits = value[:-1]
    if unit is None or not digits.isdigit() or len(digits) > 8:
        return None
    return int(digits) * unit


class AbortError(Exception):
    """Raised by :meth:`CallContext.abort`: ends the call with this status."""

    def __init__(self, code: grpc.StatusCode, details: str, trailing: tuple[Any, ...]) -> None:
        super().__init__(details)
        self.code = code
        self.details = details
        self.trailing = trailing


class CallContext:
    """What servicer methods use of ``grpc.aio.ServicerContext``."""

    __slots__ = ("_deadline", "_metadata", "_peer", "trailing")

    def __init__(
        self, metadata: tuple[tuple[str, str | bytes], ...], peer: str, deadline: float | None
    ) -> None:
        self._metadata = metadata
        self._peer = peer
        self._deadline = deadline
        self.trailing: tuple[tuple[str, str | bytes], ...] = ()

    def invocation_metadata(self) -> tuple[tuple[str, str | bytes], ...]:
        return self._metadata

    def set_trailing_metadata(self, metadata: Iterable[tuple[str, str | bytes]]) -> None:
        self.trailing = tuple(metadata)

    def peer(self) -> str:
        return self._peer

    def time_remaining(self) -> float | None:
        if self._deadline is None:
            return None
        return max(0.0, self._deadline - asyncio.get_running_loop().time())

    async def abort(
        self,
        code: grpc.StatusCode,
        details: str = "",
        trailing_metadata: Iterable[tuple[str, str | bytes]] = (),
    ) -> None:
        raise AbortError(code, details, tuple(trailing_metadata) or self.trailing)


@dataclass(frozen=True)
class Method:
    """One RPC: its handler, how to parse its request, and whether the client streams."""

    handler: Callable[[Any, CallContext], Awaitable[Any]]
    parse: Callable[[bytes], Any]
    streaming: bool = False


class _Head:
    """A request's decoded header block, with what its calls need of it worked out once
    (``GrpcH2Server._plan``): a client repeats a few blocks call after call, and a block
    kept by ``_Connection._decode`` comes back as the same object."""

    __slots__ = (
        "bad",
        "bad_metadata",
        "encoding",
        "fields",
        "metadata",
        "method",
        "planned",
        "timeout_s",
    )

    def __init__(self, fields: dict[bytes, bytes]) -> None:
        self.fields = fields
        self.planned = False
        self.method: Method | None = None
        self.bad: tuple[int, str] | None = None  # the call's refusal before any handler
        self.bad_metadata = ""  # a -bin value that is not base64: refused at the call
        self.timeout_s: float | None = None
        self.metadata: tuple[tuple[str, str | bytes], ...] = ()
        self.encoding = b"identity"


_NO_HEAD = _Head({})


def _head_of(fields: list[tuple[bytes, bytes]]) -> _Head:
    headers: dict[bytes, bytes] = {}
    for k, v in fields:
        # repeated metadata keys (rare) joined as HTTP does
        headers[k] = headers[k] + b"," + v if k in headers else v
    return _Head(headers)


def _check_block(block: bytes) -> None:
    """A header block the decoder may be given: its size, its table-size updates."""
    if len(block) > MAX_HEADER_BLOCK:
        raise H2Error(E_ENHANCE_YOUR_CALM, "header block over 16 KiB")
    check_size_updates(block)


class _Stream:
    __slots__ = (
        "born",
        "data",
        "deadline",
        "expired",
        "head",
        "held",
        "id",
        "inflated",
        "need",
        "received",
        "recv_window",
        "refused",
        "reserved",
        "size",
        "task",
        "window",
    )

    def __init__(self, stream_id: int, window: int) -> None:
        self.id = stream_id
        self.window = window  # what we may still send
        self.data: list[bytes] = []
        self.size = 0
        self.recv_window = RECEIVE_WINDOW  # what the client may still send
        self.need = -1  # the request's length once its message prefix arrived
        self.reserved = 0  # granted beyond RECEIVE_WINDOW, from the connection's pool
        self.held = 0  # bytes received, given back to the connection window at the end
        self.inflated = 0  # an inflated request's size, from the pool too
        self.head: _Head = _NO_HEAD
        self.received = False  # END_STREAM seen
        self.refused = False  # already answered (too large): rest of its data dropped
        self.task: asyncio.Task[None] | None = None
        self.deadline: float | None = None  # the call's grpc-timeout, once its call runs
        self.expired = False  # its deadline passed while its handler ran
        self.born = 0.0  # loop time of its HEADERS


class _Stalled(Exception):
    """An answer waited on the client's window (or its reading) past its deadline."""


class _Connection(asyncio.Protocol):
    def __init__(self, server: GrpcH2Server) -> None:
        self._server = server
        self.transport: asyncio.Transport | None = None
        self._loop: asyncio.AbstractEventLoop  # set by connection_made
        self.closed = False
        self._peer = ""
        self._buf = bytearray()
        self._preface = False
        # the block is capped at MAX_HEADER_BLOCK before decoding; Huffman may decode it to
        # ~1.6 times as much: allowed, rather than ending the connection over it
        self._decoder = hpack.Decoder(max_header_list_size=2 * MAX_HEADER_BLOCK)
        self._heads = BlockCache(
            self._decoder,
            _head_of,
            max_blocks=MAX_CACHED_BLOCKS,  # ≤ 32 KiB held per connection
            max_block_bytes=1024,
            check=_check_block,
        )
        self._streams: dict[int, _Stream] = {}
        self._last_id = 0
        self._goaway_sent = False
        self._max_frame = 16384
        self._initial_window = DEFAULT_WINDOW
        self._send_window = DEFAULT_WINDOW
        self._window_waiters: list[asyncio.Future[None]] = []
        self._block: bytearray | None = None
        self._block_stream = 0
        self._block_end = False
        self._skipped = -1  # bytes of an over-size header block skipped, -1: none
        self._acked = False  # the client ACKed our SETTINGS (no dynamic HPACK table)
        self._unacked = 0  # connection window given back but not yet announced
        self._pool = 2 * (server.max_receive + 5)
        self._budget = self._pool + MAX_STREAMS * RECEIVE_WINDOW + DEFAULT_WINDOW
        self._recv_window = self._budget  # what the client may still send on the connection
        self._waiting: list[_Stream] = []  # streams waiting for a grant from the pool
        self._out: list[bytes | memoryview] = []  # written at the end of the loop turn
        self._out_size = 0
        self._armed = False
        # write backpressure (review B4): while the transport's buffer is over its high-water
        # mark, nothing is read (the kernel pushes back on the client) and answers wait
        self._paused = False
        self._resume_waiters: list[asyncio.Future[None]] = []
        self._lost = False
        self._active = True  # frames came since the last tick of the timer
        self._quiet_s = 0.0  # seconds without frames nor streams
        self._timer: asyncio.TimerHandle | None = None
        self._calm_since = 0.0
        self._reset_tokens = RESET_BURST  # client resets allowed now (token bucket)
        self._reset_at = 0.0
        self._empty_data = 0

    # ------------------------------------------------------------------ asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no subclass
        # kept: asyncio.get_running_loop() costs a getpid() system call (CPython 3.11)
        self._loop = asyncio.get_running_loop()
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple) and len(peer) >= 2:
            host, port = peer[0], peer[1]
            self._peer = f"ipv6:[{host}]:{port}" if ":" in str(host) else f"ipv4:{host}:{port}"
        settings = struct.pack(
            ">HLHLHLHL",
            S_HEADER_TABLE_SIZE,
            0,
            S_MAX_CONCURRENT_STREAMS,
            MAX_STREAMS,
            S_INITIAL_WINDOW_SIZE,
            RECEIVE_WINDOW,
            S_MAX_HEADER_LIST_SIZE,
            MAX_HEADER_BLOCK,
        )
        self._write(_frame(SETTINGS, 0, 0, len(settings)) + settings)
        more = self._budget - DEFAULT_WINDOW
        self._write(_frame(WINDOW_UPDATE, 0, 0, 4) + _U32.pack(more))
        self._server.connections.add(self)
        loop = asyncio.get_running_loop()
        self._calm_since = self._reset_at = loop.time()
        self._timer = loop.call_later(self._server.preface_s, self._tick)

    def _tick(self) -> None:
        """Every ``tick_s``: a connection without a preface (after ``preface_s``) or without
        frames and streams for ``idle_s`` is closed; a request not received in full by its
        deadline (or ``idle_s``) is answered DEADLINE_EXCEEDED (review S2)."""
        self._timer = None
        if self.closed:
            return
        server = self._server
        if not self._preface:
            log.debug("gRPC connection from %s: no preface", self._peer)
            self._fail(E_PROTOCOL_ERROR)
            return
        loop = asyncio.get_running_loop()
        now = loop.time()
        if self._active or self._streams:
            self._quiet_s = 0.0
        else:
            self._quiet_s += server.tick_s
            if self._quiet_s >= server.idle_s:
                self._goaway(E_NO_ERROR)
                self.close()
                return
        self._active = False
        for st in list(self._streams.values()):
            if not st.received and st.task is None and now - st.born > server.idle_s:
                self._answer_now(
                    st, grpc.StatusCode.DEADLINE_EXCEEDED.value[0], "request not received"
                )
        self._timer = loop.call_later(server.tick_s, self._tick)

    def _calm(self) -> None:
        """Start a new abuse-counting window when the last one is over."""
        now = asyncio.get_running_loop().time()
        if now - self._calm_since > CALM_WINDOW_S:
            self._calm_since = now
            self._empty_data = 0

    def pause_writing(self) -> None:
        self._paused = True
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        self._paused = False
        if self.transport is not None and not self.closed:
            self.transport.resume_reading()
            if self._buf:  # frames left unread when writing paused
                asyncio.get_running_loop().call_soon(self.data_received, b"")
        waiters, self._resume_waiters = self._resume_waiters, []
        for w in waiters:
            if not w.done():
                w.set_result(None)

    async def writable(self) -> None:
        """Return once the transport takes writes again."""
        while self._paused and not self.closed:
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._resume_waiters.append(waiter)
            await waiter

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._lost = True
        if self._timer is not None:
            self._timer.cancel()
        for w in self._resume_waiters:
            if not w.done():
                w.set_exception(ConnectionResetError("connection lost"))
        self._resume_waiters = []
        self._server.connections.discard(self)
        streams, self._streams = self._streams, {}
        for s in streams.values():
            if s.task is not None:
                s.task.cancel()
        for w in self._window_waiters:
            if not w.done():
                w.set_exception(ConnectionResetError("connection lost"))
        self._window_waiters = []

    def data_received(self, data: bytes) -> None:
        self._active = True
        buf = self._buf
        buf += data
        pos, end = 0, len(buf)
        try:
            if not self._preface:
                if end < len(PREFACE):
                    if not PREFACE.startswith(bytes(buf)):
                        raise ValueError("not an HTTP/2 client preface")
                    return
                if bytes(buf[: len(PREFACE)]) != PREFACE:
                    raise ValueError("not an HTTP/2 client preface")
                self._preface = True
                pos = len(PREFACE)
            while end - pos >= 9:
                if self._out_size > 1 << 16:  # much to write: hand it over now
                    self._flush()
                if self._paused or self.closed:
                    break  # the rest is read when the client has read our writes
                high, low, kind, flags, stream = _HEAD.unpack_from(buf, pos)
                length = (high << 8) | low
                if length > MAX_FRAME:
                    raise H2Error(E_FRAME_SIZE, f"a frame of {length} bytes (MAX_FRAME_SIZE)")
                if end - pos - 9 < length:
                    break
                payload = bytes(buf[pos + 9 : pos + 9 + length])
                pos += 9 + length
                self._on_frame(kind, flags, stream & MAX_WINDOW, payload)
        except H2Error as exc:
            log.debug("gRPC connection from %s dropped: %s", self._peer, exc)
            self._fail(exc.code)
            return
        except (hpack.HPACKError, ValueError, struct.error) as exc:
            log.debug("gRPC connection from %s dropped: %s", self._peer, exc)
            self._fail(E_PROTOCOL_ERROR)
            return
        except Exception:
            log.warning("gRPC connection from %s dropped", self._peer, exc_info=True)
            self._fail(E_PROTOCOL_ERROR)
            return
        del buf[:pos]

    # ------------------------------------------------------------------ frames in
    def _on_frame(self, kind: int, flags: int, stream: int, payload: bytes) -> None:
        if self._block is not None and kind != CONTINUATION:
            raise ValueError("a header block was interrupted")
        if kind == DATA:
            self._on_data(flags, stream, payload)
        elif kind == HEADERS:
            if flags & PADDED:
                if not payload or payload[0] >= len(payload):
                    raise H2Error(E_PROTOCOL_ERROR, "bad padding")
                payload = payload[1 : len(payload) - payload[0]]
            if flags & PRIORITY_FLAG:
                if len(payload) < 5:
                    raise H2Error(E_FRAME_SIZE, "HEADERS too short for its priority")
                payload = payload[5:]
            if flags & END_HEADERS:
                self._on_headers(stream, payload, bool(flags & END_STREAM))
            else:
                self._block = bytearray(payload)
                self._block_stream = stream
                self._block_end = bool(flags & END_STREAM)
        elif kind == CONTINUATION:
            if self._block is None or stream != self._block_stream:
                raise ValueError("unexpected CONTINUATION")
            if self._skipped >= 0:
                self._skipped += len(payload)
                if self._skipped > 1 << 20:
                    raise H2Error(E_ENHANCE_YOUR_CALM, "header block over 1 MiB")
            else:
                self._block += payload
                if len(self._block) > MAX_HEADER_BLOCK:
                    if not self._acked or self._decoder.header_table.dynamic_entries:
                        raise H2Error(E_ENHANCE_YOUR_CALM, "header block over 16 KiB")
                    # no dynamic table on either side: the block can be skipped undecoded
                    # and only its call refused (as grpc-core does), not the connection
                    self._skipped, self._block = len(self._block), bytearray()
            if flags & END_HEADERS:
                block, self._block = bytes(self._block), None
                if self._skipped >= 0:
                    size, self._skipped = self._skipped, -1
                    self._refuse_headers(stream, size)
                else:
                    self._on_headers(stream, block, self._block_end)
        elif kind == SETTINGS:
            pairs = check_settings(payload, flags, stream)
            if not flags & ACK:
                self._on_settings(pairs)
            else:
                self._acked = True
        elif kind == WINDOW_UPDATE:
            increment = check_window_update(payload)
            if stream == 0:
                self._send_window += increment
                if self._send_window > MAX_WINDOW:
                    raise H2Error(E_FLOW_CONTROL, "connection window over 2^31-1")
            elif (s := self._streams.get(stream)) is not None:
                s.window += increment
                if s.window > MAX_WINDOW:
                    raise H2Error(E_FLOW_CONTROL, f"stream {stream}'s window over 2^31-1")
            self._wake()
        elif kind == PING:
            if len(payload) != 8:
                raise H2Error(E_FRAME_SIZE, f"PING of {len(payload)} bytes")
            if stream != 0:
                raise H2Error(E_PROTOCOL_ERROR, "PING on a stream")
            if not flags & ACK:
                self._write(_frame(PING, ACK, 0, len(payload)) + payload)
        elif kind == RST_STREAM:
            if len(payload) != 4:
                raise H2Error(E_FRAME_SIZE, f"RST_STREAM of {len(payload)} bytes")
            if stream == 0 or stream > self._last_id:
                raise H2Error(E_PROTOCOL_ERROR, f"RST_STREAM on idle stream {stream}")
            s = self._drop(stream)
            if s is not None:  # reset before its answer: counted (rapid reset)
                if s.task is not None:
                    s.task.cancel()
                now = asyncio.get_running_loop().time()
                tokens = self._reset_tokens + (now - self._reset_at) * RESET_RATE
                self._reset_tokens = min(RESET_BURST, tokens) - 1.0
                self._reset_at = now
                if self._reset_tokens < 0:
                    raise H2Error(E_ENHANCE_YOUR_CALM, "too many streams reset")
        elif kind == GOAWAY:
            self._goaway(E_NO_ERROR)
            if not self._streams:
                self.close()
        elif kind == PUSH_PROMISE:
            raise ValueError("PUSH_PROMISE from a client")
        # PRIORITY and unknown frame types are ignored

    def _refuse_headers(self, stream: int, size: int) -> None:
        """A header block over MAX_HEADER_BLOCK, skipped: its call is refused."""
        message = f"received metadata size exceeds hard limit ({size} vs. {MAX_HEADER_BLOCK})"
        code = grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
        known = self._streams.get(stream)
        if known is not None:  # trailers
            self._answer_now(known, code, message)
            return
        if stream % 2 == 0 or stream == 0:
            raise ValueError(f"bad stream id {stream}")
        if stream <= self._last_id:
            self._write(_frame(RST_STREAM, 0, stream, 4) + _U32.pack(0x5))  # STREAM_CLOSED
            return
        self._last_id = stream
        self._write_trailers_only(stream, code, message, ())
        self._write(_frame(RST_STREAM, 0, stream, 4) + _U32.pack(E_NO_ERROR))

    def _on_headers(self, stream: int, block: bytes, end_stream: bool) -> None:
        head = self._heads.decode(block)  # always: the HPACK state is the connection's
        if stream in self._streams:  # trailers from a client: end of its request
            if end_stream:
                self._request_complete(self._streams[stream])
            return
        if stream % 2 == 0 or stream == 0:
            raise ValueError(f"bad stream id {stream}")
        if stream <= self._last_id:
            # a closed stream (reused or decreasing id, or trailers after we answered): the
            # client learns at once (RFC 9113 §5.1.1) instead of waiting for its deadline
            self._write(_frame(RST_STREAM, 0, stream, 4) + _U32.pack(0x5))  # STREAM_CLOSED
            return
        self._last_id = stream
        if self._goaway_sent:
            self._write(_frame(RST_STREAM, 0, stream, 4) + _U32.pack(0x7))  # REFUSED_STREAM
            return
        s = _Stream(stream, self._initial_window)
        s.born = self._loop.time()
        s.head = head
        self._streams[stream] = s
        if len(self._streams) > MAX_STREAMS:
            self._streams.pop(stream)
            self._write(_frame(RST_STREAM, 0, stream, 4) + _U32.pack(0x7))
            return
        if end_stream:
            self._request_complete(s)
        elif self._server.streaming(head.fields.get(b":path", b"")):
            # a streaming call is answered without waiting for the client's messages
            s.task = self._loop.create_task(self._server.run_call(self, s))

    def _on_data(self, flags: int, stream: int, payload: bytes) -> None:
        length = len(payload)
        self._recv_window -= length
        if self._recv_window < 0:
            raise H2Error(E_FLOW_CONTROL, "DATA past the connection window")
        s = self._streams.get(stream)
        if s is None or s.received:
            if stream == 0 or stream > self._last_id:
                raise H2Error(E_PROTOCOL_ERROR, f"DATA on idle stream {stream}")
            self._give_back(length)
            return  # reset, answered, or data after END_STREAM: dropped
        s.recv_window -= length
        if s.recv_window < 0:
            raise H2Error(E_FLOW_CONTROL, f"DATA past stream {stream}'s window")
        if flags & PADDED:
            if not payload or payload[0] >= len(payload):
                raise H2Error(E_PROTOCOL_ERROR, "bad padding")
            payload = payload[1 : len(payload) - payload[0]]
        if not payload and not flags & END_STREAM:
            self._calm()
            self._empty_data += 1
            if self._empty_data > MAX_EMPTY_DATA:
                raise H2Error(E_ENHANCE_YOUR_CALM, "too many empty DATA frames")
        if s.refused:
            self._give_back(length)
        elif payload:
            s.held += length
            s.data.append(payload)
            s.size += len(payload)
            if s.need < 0 and s.size >= 5:
                self._on_prefix(s)
            if s.refused:
                pass
            elif s.size > self._server.max_receive + 5:
                s.refused = True
                s.data = []
                size = s.size - 5
                self._answer_now(
                    s,
                    grpc.StatusCode.RESOURCE_EXHAUSTED.value[0],
                    f"Received message larger than max ({size} vs. {self._server.max_receive})",
                )
        if flags & END_STREAM:
            self._request_complete(s)

    def _on_prefix(self, s: _Stream) -> None:
        """The request message's length is known: refuse it at once when too large (as
        grpcio does from the prefix), else grant the rest of its window from the pool."""
        head = s.data[0] if len(s.data[0]) >= 5 else b"".join(s.data)
        length = int.from_bytes(head[1:5], "big")
        s.need = length + 5
        if length > self._server.max_receive:
            self._answer_now(
                s,
                grpc.StatusCode.RESOURCE_EXHAUSTED.value[0],
                f"Received message larger than max ({length} vs. {self._server.max_receive})",
            )
        elif s.need > RECEIVE_WINDOW:
            self._grant(s)

    def _grant(self, s: _Stream) -> bool:
        extra = s.need - RECEIVE_WINDOW
        if extra > self._pool:
            if s not in self._waiting:
                self._waiting.append(s)
            return False
        self._pool -= extra
        s.reserved = extra
        s.recv_window += extra
        self._write(_frame(WINDOW_UPDATE, 0, s.id, 4) + _U32.pack(extra))
        return True

    def _give_back(self, size: int) -> None:
        """Bytes received and no longer held: the client may send as many again."""
        self._recv_window += size
        self._unacked += size
        if self._unacked >= DEFAULT_WINDOW // 2:
            self._write(_frame(WINDOW_UPDATE, 0, 0, 4) + _U32.pack(self._unacked))
            self._unacked = 0

    def _drop(self, sid: int) -> _Stream | None:
        """The stream closed: what it held goes back to the pool and the connection window,
        and streams waiting for a grant get theirs (in order)."""
        s = self._streams.pop(sid, None)
        if s is None:
            return None
        self._pool += s.reserved + s.inflated
        s.reserved = s.inflated = 0
        s.data = []
        if s.held:
            self._give_back(s.held)
            s.held = 0
        if self._waiting:
            waiting, self._waiting = self._waiting, []
            for w in waiting:
                if self._streams.get(w.id) is w and not w.refused:
                    self._grant(w)
        return s

    def abandon(self, s: _Stream) -> None:
        """End a stream whose call ended without an answer: RST_STREAM, its bytes back."""
        if self._streams.get(s.id) is s:
            self._write(_frame(RST_STREAM, 0, s.id, 4) + _U32.pack(E_CANCEL))
            self._drop(s.id)

    def hold_inflated(self, s: _Stream, size: int) -> None:
        if self._streams.get(s.id) is s:  # else already dropped: nothing to give back later
            self._pool -= size
            s.inflated += size

    def room(self) -> int:
        """Bytes the pool can still lend (to an inflated request)."""
        return max(0, self._pool)

    def _on_settings(self, pairs: list[tuple[int, int]]) -> None:
        if len(pairs) > MAX_SETTINGS:  # nghttp2's limit too: a frame's work stays small
            raise H2Error(E_ENHANCE_YOUR_CALM, f"SETTINGS with over {MAX_SETTINGS} entries")
        window: int | None = None
        for key, value in pairs:
            if key == S_INITIAL_WINDOW_SIZE:
                window = value  # the last one counts: the streams are adjusted once
            elif key == S_MAX_FRAME_SIZE:
                self._max_frame = value
        if window is not None and window != self._initial_window:
            delta = window - self._initial_window
            self._initial_window = window
            for s in self._streams.values():
                s.window += delta
                if s.window > MAX_WINDOW:
                    raise H2Error(E_FLOW_CONTROL, "a stream's window over 2^31-1")
        self._write(_frame(SETTINGS, ACK, 0, 0))
        self._wake()

    # ------------------------------------------------------------------ calls
    def _request_complete(self, s: _Stream) -> None:
        if s.received:
            return
        s.received = True
        if s.refused or s.task is not None:
            return
        s.task = self._loop.create_task(self._server.run_call(self, s))

    def _answer_now(self, s: _Stream, code: int, message: str) -> None:
        """Trailers-only error answer and the stream closed from our side (RST_STREAM so
        the client stops sending the rest of a refused request)."""
        self._write_trailers_only(s.id, code, message, ())
        self._write(_frame(RST_STREAM, 0, s.id, 4) + _U32.pack(E_NO_ERROR))
        s.refused = True
        self._drop(s.id)
        if s.task is not None:
            s.task.cancel()

    def _write_trailers_only(
        self, sid: int, code: int, message: str, trailing: Iterable[tuple[str, str | bytes]]
    ) -> None:
        block = _RESPONSE_HEAD + _status_block(code, message, trailing)
        self._write_headers(sid, block, END_STREAM)

    def _write_headers(self, sid: int, block: bytes, flags: int) -> None:
        if len(block) <= self._max_frame:
            self._write(_frame(HEADERS, flags | END_HEADERS, sid, len(block)) + block)
            return
        first, rest = block[: self._max_frame], block[self._max_frame :]
        out = [_frame(HEADERS, flags, sid, len(first)), first]
        while rest:
            chunk, rest = rest[: self._max_frame], rest[self._max_frame :]
            out += [_frame(CONTINUATION, 0 if rest else END_HEADERS, sid, len(chunk)), chunk]
        self._write(b"".join(out))

    async def answer(
        self,
        s: _Stream,
        code: int,
        message: str,
        body: bytes | None,
        trailing: Iterable[tuple[str, str | bytes]],
    ) -> None:
        """Send a call's answer: headers, message and trailers (one write when the windows
        allow), or trailers-only without a message."""
        try:
            if self._paused:  # a client that does not read gets nothing more queued
                await self._stall(s, self.writable())
        except _Stalled:
            self.abandon(s)
            if self._goaway_sent and not self._streams:
                self.close()
            return
        if self.closed or self._streams.get(s.id) is not s:
            return  # reset by the client, or the connection is gone
        try:
            if body is None:
                self._write_trailers_only(s.id, code, message, trailing)
                return
            trailers = _status_block(code, message, trailing)
            size = len(body) + 5
            prefix = b"\x00" + _U32.pack(len(body))
            if (
                size <= self._max_frame
                and size <= self._send_window
                and size <= s.window
                and len(trailers) <= self._max_frame
            ):
                self._send_window -= size
                s.window -= size
                data = b"".join(
                    (
                        _frame(HEADERS, END_HEADERS, s.id, len(_RESPONSE_HEAD)),
                        _RESPONSE_HEAD,
                        _frame(DATA, 0, s.id, size),
                        prefix,
                        body,
                        _frame(HEADERS, END_HEADERS | END_STREAM, s.id, len(trailers)),
                        trailers,
                    )
                )
                if len(self._streams) == 1 and s.received and not self._out and self.transport:
                    # no other call's answer can join it in this turn: written now
                    self.transport.write(data)
                else:
                    self._write(data)
                return
            self._write_headers(s.id, _RESPONSE_HEAD, 0)
            try:
                await self._send_data(s, memoryview(prefix + body))
            except _Stalled:
                self.abandon(s)  # RST_STREAM CANCEL; the answer is dropped
                return
            if not self.closed and self._streams.get(s.id) is s:
                self._write_headers(s.id, trailers, END_STREAM)
        finally:
            if self._drop(s.id) is not None and not s.received:
                # answered before the client finished sending: it may stop now
                self._write(_frame(RST_STREAM, 0, s.id, 4) + _U32.pack(E_NO_ERROR))
            if not self._streams:
                if self._goaway_sent:
                    self.close()
                elif self._armed:  # no other call's answer can join this write: now
                    self._flush()

    async def _send_data(self, s: _Stream, data: memoryview) -> None:
        loop = asyncio.get_running_loop()
        pos, size = 0, len(data)
        while pos < size:
            if self.closed or self._streams.get(s.id) is not s:
                return
            chunk = min(size - pos, self._max_frame, self._send_window, s.window)
            if chunk <= 0:
                waiter: asyncio.Future[None] = loop.create_future()
                self._window_waiters.append(waiter)
                await self._stall(s, waiter)
                continue
            self._send_window -= chunk
            s.window -= chunk
            self._write(_frame(DATA, 0, s.id, chunk))
            self._write(data[pos : pos + chunk])
            pos += chunk

    async def _stall(self, s: _Stream, waiting: Awaitable[None]) -> None:
        """Wait for the client (its window, or its reading) until the call's deadline, or
        ``stall_s`` without one: _Stalled past it."""
        loop = asyncio.get_running_loop()
        limit = self._server.stall_s
        if s.deadline is not None:  # a far deadline does not hold an answer past stall_s
            limit = min(limit, s.deadline - loop.time())
        try:
            await asyncio.wait_for(waiting, max(0.0, limit))
        except TimeoutError:
            raise _Stalled from None

    def _fail(self, code: int) -> None:
        """A connection error: GOAWAY, close, and drop whatever is still queued after a
        second (a client that does not read would hold the connection open)."""
        self._goaway(code)
        self.close()
        asyncio.get_running_loop().call_later(1.0, self._abort)

    def _abort(self) -> None:
        if self.transport is not None and not self._lost:
            self.transport.abort()

    def _wake(self) -> None:
        if not self._window_waiters:
            return
        waiters, self._window_waiters = self._window_waiters, []
        for w in waiters:
            if not w.done():
                w.set_result(None)

    def _write(self, data: bytes | memoryview) -> None:
        """Queue ``data``; the writes of one event-loop turn (e.g. the answers of several
        calls that one runner frame finished) leave in one system call."""
        if self.closed or self.transport is None:
            return
        self._out.append(data)
        self._out_size += len(data)
        if not self._armed:
            self._armed = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._armed = False
        out, self._out = self._out, []
        self._out_size = 0
        if out and not self.closed and self.transport is not None:
            self.transport.write(out[0] if len(out) == 1 else b"".join(out))

    def _goaway(self, code: int) -> None:
        if not self._goaway_sent:
            self._goaway_sent = True
            self._write(_frame(GOAWAY, 0, 0, 8) + _U32.pack(self._last_id) + _U32.pack(code))

    def drain(self) -> None:
        """Take no new calls (GOAWAY); close once the calls in flight are answered."""
        self._goaway(E_NO_ERROR)
        if not self._streams:
            self.close()

    def cancel_calls(self) -> None:
        for s in list(self._streams.values()):
            if s.task is not None:
                s.task.cancel()

    def close(self) -> None:
        """Close after what is queued is written; abort a second later if it is not (a
        client that never reads would otherwise hold the socket and its buffers)."""
        if self.transport is not None and not self.closed:
            self._flush()
            self.transport.close()
            asyncio.get_running_loop().call_later(1.0, self._abort)
        self.closed = True

    @property
    def busy(self) -> bool:
        return bool(self._streams)

    @property
    def peer(self) -> str:
        return self._peer


def _metadata(headers: dict[bytes, bytes]) -> tuple[tuple[str, str | bytes], ...]:
    out: list[tuple[str, str | bytes]] = []
    for k, v in headers.items():
        if k[:1] == b":" or k in _RESERVED:
            continue
        key = k.decode("ascii", "replace")
        if key.endswith("-bin"):
            for part in v.split(b","):
                out.append((key, base64.b64decode(part + b"=" * (-len(part) % 4))))
        else:
            out.append((key, v.decode("latin-1")))
    return tuple(out)


class GrpcH2Server:
    """Unary gRPC on one TCP port, calls dispatched to ``methods`` by path
    (``/package.Service/Method``)."""

    def __init__(
        self,
        methods: dict[str, Method],
        *,
        max_receive: int,
        idle_s: float = 300.0,
        preface_s: float = 10.0,
        stall_s: float = 60.0,
    ) -> None:
        """``idle_s``: a connection without streams nor frames for this long is closed (and a
        request not received in full within it answered DEADLINE_EXCEEDED); ``preface_s``:
        a connection without the HTTP/2 preface this long is closed; ``stall_s``: an answer
        waiting this long on a client that gives no window (or does not read) is dropped
        (RST_STREAM CANCEL), or at the call's deadline when it has one."""
        self._methods = methods
        # by the :path bytes a request carries (its latin-1 text names the method)
        self._by_path: dict[bytes, Method] = {}
        for path, method in methods.items():
            with contextlib.suppress(UnicodeEncodeError):
                self._by_path[path.encode("latin-1")] = method
        self.max_receive = max_receive
        self.idle_s = idle_s
        self.preface_s = preface_s
        self.stall_s = stall_s
        self.tick_s = min(idle_s / 4, preface_s, 5.0)
        self.connections: set[_Connection] = set()
        self._server: asyncio.AbstractServer | None = None
        self._calls: set[asyncio.Task[None]] = set()

    def streaming(self, path: bytes) -> bool:
        method = self._by_path.get(path)
        return method is not None and method.streaming

    async def start(
        self, host: str, port: int, *, ssl_context: ssl.SSLContext | None = None
    ) -> int:
        """Listen (TLS with ``ssl_context``, which must negotiate ``h2`` by ALPN); the bound
        port (a free one for 0). OSError when the port is taken."""
        loop = asyncio.get_running_loop()
        if host.strip("[]") == "::":
            # every address of both families, as grpcio binds "[::]" (asyncio alone would
            # make the socket IPv6-only)
            sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
                sock.bind(("::", port))
            except OSError:
                sock.close()
                raise
            self._server = await loop.create_server(
                lambda: _Connection(self), sock=sock, ssl=ssl_context
            )
        else:
            self._server = await loop.create_server(
                lambda: _Connection(self), host, port, reuse_address=True, ssl=ssl_context
            )
        return int(self._server.sockets[0].getsockname()[1])

    async def stop(self, grace_s: float) -> None:
        """No new connections or calls; calls in flight get ``grace_s`` to finish."""
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        for conn in list(self.connections):
            conn.drain()
        if self._calls:
            await asyncio.wait(set(self._calls), timeout=grace_s)
        for conn in list(self.connections):
            conn.cancel_calls()
            conn.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(server.wait_closed(), 1.0)

    async def run_call(self, conn: _Connection, s: _Stream) -> None:
        """Run one call's handler and answer it."""
        task = s.task  # this task (asyncio.current_task() costs a getpid() system call)
        assert task is not None
        self._calls.add(task)
        try:
            head = s.head
            if not head.planned:
                self._plan(head)
            if head.bad is not None:
                await conn.answer(s, head.bad[0], head.bad[1], None, ())
                return
            method = head.method
            assert method is not None
            loop = conn._loop
            deadline = None if head.timeout_s is None else loop.time() + head.timeout_s
            s.deadline = deadline
            context = CallContext(head.metadata, conn.peer, deadline)
            code, message, answer = 0, "", None
            # the deadline: a timer that cancels the handler (asyncio.timeout's way, without
            # its context manager; none at all for a call without grpc-timeout)
            timer, cancelling = None, 0
            if deadline is not None:
                cancelling = task.cancelling()
                timer = loop.call_at(deadline, _expire, task, s)
            try:
                if head.bad_metadata:
                    raise _BadMessage(grpc.StatusCode.INTERNAL.value[0], head.bad_metadata)
                request = self._request(conn, method, s, head.encoding)
                response = await method.handler(request, context)
                # bytes (an answer passed through) go as they are
                answer = response if isinstance(response, bytes) else response.SerializeToString()
            except AbortError as exc:
                code, message = exc.code.value[0], exc.details
                context.trailing = exc.trailing
            except _BadMessage as exc:
                code, message = exc.code, exc.message
            except asyncio.CancelledError:
                # past the deadline, and cancelled by nothing else: DEADLINE_EXCEEDED
                if not s.expired:
                    raise
                s.expired = False
                if task.uncancel() > cancelling:
                    raise
                code, message = grpc.StatusCode.DEADLINE_EXCEEDED.value[0], "Deadline Exceeded"
            except Exception as exc:
                path = head.fields.get(b":path", b"").decode("latin-1")
                log.exception("unhandled error in gRPC method %s", path)
                code, message = grpc.StatusCode.UNKNOWN.value[0], f"Unexpected {type(exc)}: {exc}"
            finally:
                if timer is not None:
                    timer.cancel()
                    if s.expired:  # it fired, and the handler ended some other way
                        s.expired = False
                        task.uncancel()
            await conn.answer(s, code, message, answer if code == 0 else None, context.trailing)
        except (asyncio.CancelledError, ConnectionError):
            pass  # reset by the client, the connection lost, or the server stopping
        except Exception:
            log.exception("gRPC call on %s failed", conn.peer)
        finally:
            self._calls.discard(task)
            conn.abandon(s)  # never answered (a bug, or cancelled): the stream still ends

    def _plan(self, head: _Head) -> None:
        """What the calls of a header block need of it: its method (or its refusal), its
        deadline, its metadata as grpc.aio gives it, its message encoding."""
        fields = head.fields
        head.method = method = self._by_path.get(fields.get(b":path", b""))
        if method is None:
            head.bad = (grpc.StatusCode.UNIMPLEMENTED.value[0], "Method not found!")
        elif not fields.get(b"content-type", b"").startswith(b"application/grpc"):
            head.bad = (grpc.StatusCode.INTERNAL.value[0], "content-type is not application/grpc")
        else:
            given = fields.get(b"grpc-timeout")
            head.timeout_s = None if given is None else parse_timeout(given)
            try:
                head.metadata = _metadata(fields)
            except ValueError as exc:  # binascii.Error: a -bin value not base64
                head.bad_metadata = f"bad binary metadata: {exc}"
            head.encoding = fields.get(b"grpc-encoding", b"identity")
        head.planned = True

    def _request(self, conn: _Connection, method: Method, s: _Stream, encoding: bytes) -> Any:
        data = s.data[0] if len(s.data) == 1 else b"".join(s.data)
        s.data = []
        if method.streaming:
            return _no_messages()
        if len(data) < 5:
            raise _BadMessage(grpc.StatusCode.INTERNAL.value[0], "No request message")
        length = int.from_bytes(data[1:5], "big")
        if length != len(data) - 5:
            raise _BadMessage(
                grpc.StatusCode.UNIMPLEMENTED.value[0], "a unary call carries one message"
            )
        body = data[5:]
        if data[0]:
            wbits = {b"gzip": 31, b"deflate": 15}.get(encoding)
            if wbits is None:
                raise _BadMessage(
                    grpc.StatusCode.UNIMPLEMENTED.value[0],
                    f"compression {encoding.decode('latin-1')!r} is not supported",
                )
            inflater = zlib.decompressobj(wbits)
            # inflated bytes are held from the connection's pool (review B3, S6)
            limit = min(self.max_receive, conn.room())
            try:
                body = inflater.decompress(body, limit + 1)
            except zlib.error as exc:
                raise _BadMessage(
                    grpc.StatusCode.INTERNAL.value[0], f"cannot inflate the request: {exc}"
                ) from exc
            if len(body) > self.max_receive:
                raise _BadMessage(
                    grpc.StatusCode.RESOURCE_EXHAUSTED.value[0],
                    f"Received message larger than max (inflated over {self.max_receive})",
                )
            if len(body) > limit:
                raise _BadMessage(
                    grpc.StatusCode.RESOURCE_EXHAUSTED.value[0],
                    "the connection's requests in flight are over its memory budget",
                )
            if not inflater.eof:
                raise _BadMessage(
                    grpc.StatusCode.INTERNAL.value[0], "cannot inflate the request: truncated"
                )
            conn.hold_inflated(s, len(body))
        try:
            return method.parse(body)
        except Exception as exc:
            raise _BadMessage(
                grpc.StatusCode.INTERNAL.value[0], f"Failed to parse the request: {exc}"
            ) from exc


def _expire(task: asyncio.Task[None], s: _Stream) -> None:
    """A call's deadline passed: its handler is cancelled (``run_call`` answers it)."""
    if not task.done():
        s.expired = True
        task.cancel()


class _BadMessage(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


async def _no_messages() -> Any:  # pragma: no cover - an empty request stream
    return
    yield
