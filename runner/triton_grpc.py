"""A small gRPC client (HTTP/2 over cleartext TCP) for the one call the runner passes through:
unary ``/inference.GRPCInferenceService/ModelInfer`` to the local Triton, the caller's
serialized ``ModelInferRequest`` in, Triton's serialized ``ModelInferResponse`` (or its
status code and message) out, exactly as on the wire.

grpc.aio spends 0.35-0.45 ms of CPU per unary call on this path (its completion-queue poller
thread wakes the event loop through a socket for each event, and each call builds several
Cython/Python objects); the HTTP client next door (``runner/triton_http.py``) spends 0.07 ms
on the same request. Here one HTTP/2 connection (an asyncio protocol) multiplexes the calls
in flight, a call's HEADERS and DATA leave in one ``write`` and the answer is parsed from the
frames as they come: no thread, no per-call task.

What it does of HTTP/2 and gRPC (RFC 9113, gRPC over HTTP2):
- the client preface, SETTINGS (no push; a 2 GiB stream window and connection window, so
  Triton never waits for us) answered with ACKs, PING answered, the peer's SETTINGS applied
  (max frame size, initial window, concurrent streams; HPACK through the ``hpack`` package);
- flow control when sending: a message larger than the windows waits for WINDOW_UPDATE;
- request headers as HPACK literals without indexing (no encoder state), ``grpc-timeout``
  from the call's timeout, no ``grpc-accept-encoding`` (Triton answers uncompressed);
- answers: headers, data, trailers (or trailers-only); ``grpc-status`` and the
  percent-decoded ``grpc-message``; an HTTP status without ``grpc-status`` mapped as the
  gRPC spec says; RST_STREAM mapped (REFUSED_STREAM: not processed);
- GOAWAY: calls above its last stream id were not processed and are retried once on a new
  connection, as grpc does; calls at or below it finish; new calls open a new connection;
- a call whose time runs out (``DEADLINE_EXCEEDED``, "Deadline Exceeded", as grpc says) or
  that is cancelled resets its stream (RST_STREAM CANCEL).

Transport failures (refused, closed mid-call) raise ``ConnectionError`` (the runner's
transient Triton errors). Statuses are numbers (``grpc.StatusCode.X.value[0]``).

    client = TritonGrpc("127.0.0.1", 8001)
    status, message, body = await client.unary(METHOD, request_bytes, timeout_s=10.0)
    client.close()
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from urllib.parse import unquote

import hpack
from gpufleet._h2 import (
    ACK,
    CONTINUATION,
    DATA,
    DEFAULT_WINDOW,
    E_CANCEL,
    E_ENHANCE_YOUR_CALM,
    E_INADEQUATE_SECURITY,
    E_REFUSED_STREAM,
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
    S_ENABLE_PUSH,
    S_HEADER_TABLE_SIZE,
    S_INITIAL_WINDOW_SIZE,
    S_MAX_CONCURRENT_STREAMS,
    S_MAX_FRAME_SIZE,
    SETTINGS,
    WINDOW_UPDATE,
    BlockCache,
    check_settings,
)
from gpufleet._h2 import HEAD as _HEAD
from gpufleet._h2 import U32 as _U32
from gpufleet._h2 import frame as _frame
from gpufleet._h2 import hpack_int as _hpack_int
from gpufleet._h2 import literal as _literal

__all__ = [
    "GRPC_INVALID_ARGUMENT",
    "GRPC_NOT_FOUND",
    "GRPC_OK",
    "GRPC_UNAVAILABLE",
    "GrpcAnswer",
    "TritonGrpc",
    "grpc_status_name",
]

# gRPC status codes (grpc.StatusCode.X.value[0])
_STATUS_NAMES = [
    *("OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND"),
    *("ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION"),
    *("ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS"),
    "UNAUTHENTICATED",
]
OK, CANCELLED, UNKNOWN, INVALID_ARGUMENT, DEADLINE_EXCEEDED, NOT_FOUND = range(6)
PERMISSION_DENIED, RESOURCE_EXHAUSTED = 7, 8
UNIMPLEMENTED, INTERNAL, UNAVAILABLE, UNAUTHENTICATED = 12, 13, 14, 16
GRPC_OK, GRPC_INVALID_ARGUMENT, GRPC_NOT_FOUND, GRPC_UNAVAILABLE = (
    OK,
    INVALID_ARGUMENT,
    NOT_FOUND,
    UNAVAILABLE,
)


def grpc_status_name(code: int) -> str:
    """``DEADLINE_EXCEEDED`` for 4 (grpc.StatusCode's names); ``UNKNOWN`` for a number out of
    range."""
    return _STATUS_NAMES[code] if 0 <= code < len(_STATUS_NAMES) else "UNKNOWN"


_REPLENISH = 2**30  # give the window back once this much was received

# HTTP status -> gRPC status, when an answer has no grpc-status (gRPC's http-grpc-status-mapping)
_HTTP_TO_GRPC = {
    400: INTERNAL,
    401: UNAUTHENTICATED,
    403: PERMISSION_DENIED,
    404: UNIMPLEMENTED,
    429: UNAVAILABLE,
    502: UNAVAILABLE,
    503: UNAVAILABLE,
    504: UNAVAILABLE,
}
_RST_TO_GRPC = {
    E_REFUSED_STREAM: UNAVAILABLE,
    E_CANCEL: CANCELLED,
    E_ENHANCE_YOUR_CALM: RESOURCE_EXHAUSTED,
    E_INADEQUATE_SECURITY: PERMISSION_DENIED,
}


def _unpad(payload: bytes) -> bytes:
    """A padded frame's content (ValueError when the padding does not fit, RFC 9113 §6.1)."""
    if not payload or payload[0] >= len(payload):
        raise ValueError("bad padding")
    return payload[1 : len(payload) - payload[0]]


def _hpack_str(value: bytes) -> bytes:
    return _hpack_int(len(value), 7, 0) + value


def grpc_timeout(timeout_s: float) -> bytes:
    """The ``grpc-timeout`` value of ``timeout_s`` (at most 8 digits, as the spec says)."""
    ms = max(1, int(timeout_s * 1000))
    if ms < 10**8:
        return b"%dm" % ms
    return b"%dS" % min(max(1, int(timeout_s)), 10**8 - 1)


class GrpcAnswer:
    """A finished call: gRPC status number, its message and the response message's bytes."""

    __slots__ = ("body", "message", "status")

    def __init__(self, status: int, message: str, body: bytes) -> None:
        self.status = status
        self.message = message
        self.body = body


class _Refused(Exception):
    """The server did not process the stream (GOAWAY above it, REFUSED_STREAM): retry."""


class _Stream:
    __slots__ = (
        "data",
        "headers_seen",
        "http_status",
        "id",
        "received",
        "timer",
        "waiter",
        "window",
    )

    def __init__(self, stream_id: int, window: int, waiter: asyncio.Future[GrpcAnswer]) -> None:
        self.id = stream_id
        self.window = window
        self.waiter = waiter
        self.data: list[bytes] = []
        self.headers_seen = False
        self.http_status = 0
        self.received = 0
        self.timer: asyncio.TimerHandle | None = None  # its deadline (a call started at once)


class _Connection(asyncio.Protocol):
    """One HTTP/2 connection; ``call`` runs one unary call on a new stream."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.loop: asyncio.AbstractEventLoop  # set by connection_made
        self.closed = False
        self.goaway = False
        self._buf = bytearray()
        self._decoder = hpack.Decoder()
        # no dynamic table by our SETTINGS: Triton's repeated blocks are decoded once
        self._heads = BlockCache(self._decoder, dict, max_blocks=256, max_block_bytes=512)
        self._streams: dict[int, _Stream] = {}
        self._next_id = 1
        self._max_frame = 16384
        self._initial_window = DEFAULT_WINDOW
        self._send_window = DEFAULT_WINDOW
        self._max_streams = MAX_WINDOW
        self._window_waiters: list[asyncio.Future[None]] = []
        self._slot_waiters: list[asyncio.Future[None]] = []
        self._block: bytearray | None = None  # a header block awaiting CONTINUATION
        self._block_stream = 0
        self._block_end = False
        self._unacked = 0  # bytes received not yet given back (connection window)
        self._out: list[bytes | memoryview] = []  # written at the end of the loop turn
        self._armed = False

    # ------------------------------------------------------------------ asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no subclass
        # kept: asyncio.get_running_loop() costs a getpid() system call (CPython 3.11)
        self.loop = asyncio.get_running_loop()
        # no dynamic HPACK table: Triton's header blocks then mean the same whenever they
        # recur, and are decoded once (see _decode)
        settings = struct.pack(
            ">HLHLHL", S_HEADER_TABLE_SIZE, 0, S_ENABLE_PUSH, 0, S_INITIAL_WINDOW_SIZE, MAX_WINDOW
        )
        self._write(  # the preface first: the calls' frames queue behind it
            PREFACE
            + _frame(SETTINGS, 0, 0, len(settings))
            + settings
            + _frame(WINDOW_UPDATE, 0, 0, 4)
            + struct.pack(">L", MAX_WINDOW - DEFAULT_WINDOW)
        )

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._fail_all(ConnectionResetError(f"Triton closed the gRPC connection: {exc or 'EOF'}"))

    def data_received(self, data: bytes) -> None:
        buf = self._buf
        buf += data
        pos, end = 0, len(buf)
        try:
            while end - pos >= 9:
                high, low, kind, flags, stream = _HEAD.unpack_from(buf, pos)
                length = (high << 8) | low
                if length > MAX_FRAME:
                    raise ValueError(f"a frame of {length} bytes (SETTINGS_MAX_FRAME_SIZE)")
                if end - pos - 9 < length:
                    break
                payload = bytes(buf[pos + 9 : pos + 9 + length])
                pos += 9 + length
                self._on_frame(kind, flags, stream & MAX_WINDOW, payload)
        except (hpack.HPACKError, ValueError, struct.error) as exc:
            self._abort(f"Triton's gRPC answer is not valid HTTP/2: {exc}")
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
                payload = _unpad(payload)
            if flags & PRIORITY_FLAG:
                if len(payload) < 5:
                    raise ValueError("HEADERS too short for its priority")
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
            self._block += payload
            if flags & END_HEADERS:
                block, self._block = bytes(self._block), None
                self._on_headers(stream, block, self._block_end)
        elif kind == SETTINGS:
            if not flags & ACK:
                self._on_settings(payload)
        elif kind == WINDOW_UPDATE:
            increment = struct.unpack(">L", payload)[0] & MAX_WINDOW
            if stream == 0:
                self._send_window += increment
            elif (s := self._streams.get(stream)) is not None:
                s.window += increment
            self._wake(self._window_waiters)
        elif kind == PING:
            if len(payload) != 8:
                raise ValueError(f"PING of {len(payload)} bytes")
            if not flags & ACK and self.transport is not None:
                self._write(_frame(PING, ACK, 0, len(payload)) + payload)
        elif kind == RST_STREAM:
            code = struct.unpack(">L", payload)[0]
            s = self._streams.pop(stream, None)
            if s is not None:
                self._wake(self._slot_waiters)
                if code == E_REFUSED_STREAM:
                    self._set(s, _Refused())
                else:
                    status = _RST_TO_GRPC.get(code, INTERNAL)
                    self._set(s, GrpcAnswer(status, f"stream reset by Triton (code {code})", b""))
        elif kind == GOAWAY:
            last = struct.unpack_from(">L", payload)[0] & MAX_WINDOW
            self.goaway = True
            for sid in [sid for sid in self._streams if sid > last]:
                self._set(self._streams.pop(sid), _Refused())
            self._wake(self._slot_waiters)
            if not self._streams:
                self.close()
        elif kind == PUSH_PROMISE:
            raise ValueError("PUSH_PROMISE although push is disabled")
        # PRIORITY and unknown frame types are ignored, as the spec says

    def _window_update(self, stream: int, increment: int) -> None:
        if self.transport is not None:
            self._write(_frame(WINDOW_UPDATE, 0, stream, 4) + _U32.pack(increment))

    def _on_data(self, flags: int, stream: int, payload: bytes) -> None:
        length = len(payload)
        self._unacked += length
        if self._unacked >= _REPLENISH and self.transport is not None:
            self._window_update(0, self._unacked)
            self._unacked = 0
        if flags & PADDED:
            payload = _unpad(payload)
        s = self._streams.get(stream)
        if s is None:
            return  # a stream we reset
        s.data.append(payload)
        s.received += length
        if s.received >= _REPLENISH and self.transport is not None and not flags & END_STREAM:
            self._write(_frame(WINDOW_UPDATE, 0, stream, 4) + struct.pack(">L", s.received))
            s.received = 0
        if flags & END_STREAM:  # no trailers: not a gRPC answer
            self._finish(s, INTERNAL, "Triton's gRPC answer ended without trailers")

    def _on_headers(self, stream: int, block: bytes, end_stream: bool) -> None:
        headers = self._heads.decode(block)  # always: the HPACK state is the connection's
        s = self._streams.get(stream)
        if s is None:
            return
        if not s.headers_seen:
            s.headers_seen = True
            try:
                s.http_status = int(headers.get(b":status", b"0"))
            except ValueError:
                s.http_status = 0
            if not end_stream:
                return
        elif not end_stream:
            raise ValueError("headers after the answer's headers without END_STREAM")
        # trailers (or a trailers-only answer)
        status = headers.get(b"grpc-status")
        if status is None:
            code = OK if s.http_status == 200 else _HTTP_TO_GRPC.get(s.http_status, UNKNOWN)
            if code == OK:
                code = INTERNAL
            self._finish(s, code, f"Triton's gRPC answer has no grpc-status (HTTP {s.http_status})")
            return
        message = headers.get(b"grpc-message", b"")
        text = unquote(message.decode("latin-1"), errors="replace") if message else ""
        try:
            code = int(status)
        except ValueError:
            code, text = UNKNOWN, f"invalid grpc-status {status!r}"
        self._finish(s, code, text)

    def _on_settings(self, payload: bytes) -> None:
        # RFC 9113 §6.5.2: a value we would loop on, or overflow with, is an error
        for key, value in check_settings(payload, 0, 0):
            if key == S_INITIAL_WINDOW_SIZE:
                delta = value - self._initial_window
                self._initial_window = value
                for s in self._streams.values():
                    s.window += delta
            elif key == S_MAX_FRAME_SIZE:
                self._max_frame = value
            elif key == S_MAX_CONCURRENT_STREAMS:
                self._max_streams = value
        if self.transport is not None:
            self._write(_frame(SETTINGS, ACK, 0, 0))
        self._wake(self._window_waiters)
        self._wake(self._slot_waiters)

    # ------------------------------------------------------------------ answers
    def _finish(self, s: _Stream, code: int, message: str) -> None:
        self._streams.pop(s.id, None)
        self._wake(self._slot_waiters)
        if code != OK:
            self._set(s, GrpcAnswer(code, message, b""))
        else:
            data = s.data[0] if len(s.data) == 1 else b"".join(s.data)
            if len(data) < 5:
                self._set(s, GrpcAnswer(INTERNAL, "Triton's gRPC answer has no message", b""))
            elif data[0] != 0:
                self._set(s, GrpcAnswer(INTERNAL, "Triton's gRPC answer is compressed", b""))
            elif int.from_bytes(data[1:5], "big") != len(data) - 5:
                self._set(s, GrpcAnswer(INTERNAL, "Triton's gRPC answer is not one message", b""))
            else:
                self._set(s, GrpcAnswer(OK, message, data[5:]))
        if self.goaway and not self._streams:
            self.close()

    @staticmethod
    def _set(s: _Stream, outcome: GrpcAnswer | BaseException) -> None:
        if s.timer is not None:
            s.timer.cancel()
            s.timer = None
        if s.waiter.done():
            return
        if isinstance(outcome, BaseException):
            s.waiter.set_exception(outcome)
        else:
            s.waiter.set_result(outcome)

    @staticmethod
    def _wake(waiters: list[asyncio.Future[None]]) -> None:
        while waiters:
            w = waiters.pop()
            if not w.done():
                w.set_result(None)

    def _fail_all(self, exc: BaseException) -> None:
        streams, self._streams = self._streams, {}
        for s in streams.values():
            self._set(s, exc)
        for w in self._window_waiters + self._slot_waiters:
            if not w.done():
                w.set_exception(exc)
        self._window_waiters, self._slot_waiters = [], []

    def _abort(self, why: str) -> None:
        self._fail_all(ConnectionError(why))
        self.close()

    def _write(self, data: bytes | memoryview) -> None:
        """Queue ``data``; the writes of one event-loop turn leave in one system call."""
        if self.closed or self.transport is None:
            return
        self._out.append(data)
        if not self._armed:
            self._armed = True
            self.loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._armed = False
        out, self._out = self._out, []
        if out and not self.closed and self.transport is not None:
            self.transport.write(out[0] if len(out) == 1 else b"".join(out))

    def close(self) -> None:
        self._flush()
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    # ------------------------------------------------------------------ calls out
    @property
    def usable(self) -> bool:
        return not self.closed and not self.goaway and self._next_id < MAX_WINDOW

    def start(self, head: bytes, body: bytes, deadline: float) -> _Stream | None:
        """A unary call sent now, when it can be (a stream free, the message within the
        windows and one frame): its stream, whose waiter gets the answer, DEADLINE_EXCEEDED
        at ``deadline`` (loop time). None: use :meth:`call`."""
        size = len(body) + 5
        if (
            len(self._streams) >= self._max_streams
            or size > self._max_frame
            or size > self._send_window
            or size > self._initial_window
            or not self.usable
            or self.transport is None
        ):
            return None
        loop = self.loop
        sid = self._next_id
        self._next_id += 2
        s = _Stream(sid, self._initial_window - size, loop.create_future())
        self._streams[sid] = s
        self._send_window -= size
        data = b"".join(
            (
                _frame(HEADERS, END_HEADERS, sid, len(head)),
                head,
                _frame(DATA, END_STREAM, sid, size),
                b"\x00",
                _U32.pack(len(body)),
                body,
            )
        )
        if len(self._streams) == 1 and not self._out:
            self.transport.write(data)  # no other call's frames can join it in this turn
        else:
            self._write(data)
        s.timer = loop.call_at(deadline, self._expire, s)
        return s

    def _expire(self, s: _Stream) -> None:
        s.timer = None
        if self._streams.get(s.id) is s:
            self.forget(s)
            self._set(s, GrpcAnswer(DEADLINE_EXCEEDED, "Deadline Exceeded", b""))

    def forget(self, s: _Stream) -> None:
        """A started call given up (its deadline, or its caller cancelled): its stream reset."""
        if s.timer is not None:
            s.timer.cancel()
            s.timer = None
        if self._streams.pop(s.id, None) is not None:
            self._wake(self._slot_waiters)
            if not self.closed and self.transport is not None:
                self._write(_frame(RST_STREAM, 0, s.id, 4) + _U32.pack(E_CANCEL))

    async def call(self, head: bytes, body: bytes) -> GrpcAnswer:
        """One unary call: ``head`` (an encoded header block), ``body`` (the message)."""
        loop = asyncio.get_running_loop()
        while len(self._streams) >= self._max_streams:
            waiter: asyncio.Future[None] = loop.create_future()
            self._slot_waiters.append(waiter)
            await waiter
        if not self.usable or self.transport is None:
            raise _Refused()
        sid = self._next_id
        self._next_id += 2
        s = _Stream(sid, self._initial_window, loop.create_future())
        self._streams[sid] = s
        size = len(body) + 5
        prefix = b"\x00" + struct.pack(">L", len(body))
        headers = _frame(HEADERS, END_HEADERS, sid, len(head)) + head
        try:
            if size <= self._max_frame and size <= self._send_window and size <= s.window:
                self._send_window -= size
                s.window -= size
                self._write(b"".join((headers, _frame(DATA, END_STREAM, sid, size), prefix, body)))
            else:
                self._write(headers)
                await self._send_data(s, memoryview(prefix + body))
            return await s.waiter
        except BaseException:
            if self._streams.pop(sid, None) is not None:
                self._wake(self._slot_waiters)
                if not self.closed and self.transport is not None:
                    self._write(_frame(RST_STREAM, 0, sid, 4) + struct.pack(">L", E_CANCEL))
            raise

    async def _send_data(self, s: _Stream, data: memoryview) -> None:
        loop = asyncio.get_running_loop()
        pos, size = 0, len(data)
        while pos < size:
            if s.waiter.done():
                return  # answered (an error) before the whole request left
            if self.closed or self.transport is None:
                raise ConnectionResetError("Triton closed the gRPC connection")
            chunk = min(size - pos, self._max_frame, self._send_window, s.window)
            if chunk <= 0:
                waiter: asyncio.Future[None] = loop.create_future()
                self._window_waiters.append(waiter)
                await waiter
                continue
            self._send_window -= chunk
            s.window -= chunk
            last = pos + chunk == size
            self._write(_frame(DATA, END_STREAM if last else 0, s.id, chunk))
            self._write(data[pos : pos + chunk])
            pos += chunk


class TritonGrpc:
    """Unary gRPC calls to one cleartext HTTP/2 endpoint (``host``:``port``)."""

    def __init__(self, host: str, port: int, *, connect_timeout_s: float = 10.0) -> None:
        self._host = host
        self._port = port
        self._connect_timeout_s = connect_timeout_s
        self._conn: _Connection | None = None
        self._connecting: asyncio.Future[_Connection] | None = None
        self._heads: dict[tuple[str, float], bytes] = {}
        self._authority = f"{host}:{port}".encode()

    def _head(self, method: str, timeout_s: float) -> bytes:
        key = (method, timeout_s)
        head = self._heads.get(key)
        if head is None:
            timeout = grpc_timeout(timeout_s)
            head = b"".join(
                (
                    b"\x83",  # :method POST (static 3)
                    b"\x86",  # :scheme http (static 6)
                    _literal(4, method.encode()),  # :path
                    _literal(1, self._authority),  # :authority
                    _literal(31, b"application/grpc"),  # content-type
                    _literal(b"te", b"trailers"),
                    _literal(58, b"gpufleet-runner"),  # user-agent
                    _literal(b"grpc-timeout", timeout),
                )
            )
            if len(self._heads) > 64:
                self._heads.clear()
            self._heads[key] = head
        return head

    async def _connection(self) -> _Connection:
        conn = self._conn
        if conn is not None and conn.usable:
            return conn
        if self._connecting is not None:
            return await asyncio.shield(self._connecting)
        loop = asyncio.get_running_loop()
        self._connecting = connecting = loop.create_future()
        try:
            try:
                _, new = await asyncio.wait_for(
                    loop.create_connection(_Connection, self._host, self._port),
                    self._connect_timeout_s,
                )
            except TimeoutError as exc:
                raise ConnectionError(
                    f"connecting to Triton at {self._host}:{self._port} timed out"
                ) from exc
        except BaseException as exc:
            connecting.set_exception(exc if isinstance(exc, Exception) else ConnectionError())
            connecting.exception()  # retrieved: no "never retrieved" warning when alone
            raise
        finally:
            self._connecting = None
        self._conn = new
        connecting.set_result(new)
        return new

    async def unary(self, method: str, body: bytes, timeout_s: float) -> GrpcAnswer:
        """Call ``method`` (``/package.Service/Method``) with the serialized ``body``; the
        answer, whatever its status (``DEADLINE_EXCEEDED`` when ``timeout_s`` passes)."""
        head = self._heads.get((method, timeout_s)) or self._head(method, timeout_s)
        conn = self._conn
        attempts = 2
        if conn is not None:
            # the common case, without a coroutine or a timeout scope of its own: the call
            # leaves now on the open connection, a timer stands for its deadline
            loop = conn.loop
            deadline = loop.time() + timeout_s
            s = conn.start(head, body, deadline)
            if s is not None:
                try:
                    return await s.waiter
                except _Refused:
                    attempts = 1  # once more on a new connection, in the time left
                    timeout_s = deadline - loop.time()
                except BaseException:
                    conn.forget(s)
                    raise
        try:
            async with asyncio.timeout(timeout_s):
                for attempt in range(2 - attempts, 2):
                    conn = await self._connection()
                    try:
                        return await conn.call(head, body)
                    except _Refused:
                        if attempt:
                            return GrpcAnswer(UNAVAILABLE, "Triton refused the stream", b"")
        except TimeoutError:
            return GrpcAnswer(DEADLINE_EXCEEDED, "Deadline Exceeded", b"")
        raise AssertionError("unreachable")  # pragma: no cover

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()
