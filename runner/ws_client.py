"""A lean WebSocket client connection (RFC 6455) for the runner's dispatch channel.

The channel carries one or two small messages per synchronous inference request, and the
general client (``websockets.asyncio``: a send lock, a sans-I/O state machine, a generator
parser per frame, a message assembler and a receiving task) cost the runner about as much CPU
per request as the rest of its work. Here one ``asyncio.Protocol`` does it all:

- The opening handshake is ``websockets``' own (its sans-I/O ``ClientProtocol`` builds the
  upgrade request, checks ``Sec-WebSocket-Accept``, reads a refusal's status and body): the
  same request as ``websockets.asyncio.client.connect`` sends, caller's headers included;
  a refusal raises its ``InvalidStatus``. TLS through the event loop (``wss://``).
- Then frames are parsed in ``data_received`` and each complete message (text as ``str``,
  binary as ``bytes``; fragmented messages assembled) is handed to ``on_message`` right
  there, no queue, no task. Messages over ``max_size`` fail the connection (1009), invalid
  UTF-8 (1007), protocol errors (1002), as ``websockets`` does.
- ``send`` queues a message; the queue is written at the end of the event-loop turn in one
  ``transport.write``, consecutive binary messages of the turn joined into one (the channel's
  binary frames are self-delimiting, see ``gpufleet.channel``), up to ``batch_bytes``.
  Client frames are masked (``websockets``' C ``apply_mask``, keys from ``os.urandom``).
- Pings are answered; a ping every ``ping_interval`` s must be answered within
  ``ping_timeout`` s or the connection fails (1011), as the library's keepalive does.
- Closing: ``close()`` sends a close frame and waits (up to ``close_timeout``) for the
  server's and for the server to end the TCP connection; a close frame from the server is
  echoed. ``wait_closed()`` returns how it ended (a :class:`WsClosed`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import ssl as ssl_module
import struct
from collections.abc import Callable
from typing import Any

from websockets.client import ClientProtocol
from websockets.exceptions import InvalidMessage, ProtocolError
from websockets.frames import Close
from websockets.http11 import USER_AGENT
from websockets.protocol import State
from websockets.uri import parse_uri

try:  # the C version websockets ships (a pure-Python fallback otherwise)
    from websockets.speedups import apply_mask
except ImportError:  # pragma: no cover
    from websockets.utils import apply_mask

__all__ = ["WsClosed", "WsConnection", "ws_connect"]

log = logging.getLogger(__name__)

OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
CLOSE_NORMAL, CLOSE_PROTOCOL, CLOSE_INVALID_DATA = 1000, 1002, 1007
CLOSE_TOO_BIG, CLOSE_INTERNAL, CLOSE_ABNORMAL = 1009, 1011, 1006
MAX_HANDSHAKE_BYTES = 64 * 1024

_CONNECTING, _OPEN, _CLOSING, _CLOSED = 0, 1, 2, 3
_U16 = struct.Struct("!H")
_U64 = struct.Struct("!Q")
_HEAD16 = struct.Struct("!BBH")
_HEAD64 = struct.Struct("!BBQ")


class WsClosed(ConnectionError):
    """The connection is closed: ``code`` and ``reason`` of the close frame received
    (1006 when none was: the TCP connection ended first), ``sent`` the one sent if any."""

    def __init__(self, code: int, reason: str = "", sent: int | None = None) -> None:
        self.code = code
        self.reason = reason
        self.sent = sent
        what = f"received {code}" + (f" ({reason})" if reason else "")
        super().__init__(what if sent is None else f"{what}; sent {sent}")


class _Fail(Exception):
    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


class _KeyPool:
    """Masking keys: 4 bytes each from the OS's random source, fetched 1024 keys at a time
    (read inline by ``frame_bytes``: one frame per answer, each call counts)."""

    __slots__ = ("at", "pool")
    SIZE = 4096

    def __init__(self) -> None:
        self.pool = b""
        self.at = self.SIZE

    def next(self) -> bytes:
        if self.at >= self.SIZE:
            self.pool, self.at = os.urandom(self.SIZE), 0
        self.at += 4
        return self.pool[self.at - 4 : self.at]


_keys = _KeyPool()


def frame_bytes(opcode: int, payload: bytes, fin: bool = True) -> bytes:
    """One masked client frame (RFC 6455 5.2) carrying ``payload``."""
    n = len(payload)
    b0 = opcode | 0x80 if fin else opcode
    if n < 126:
        head = bytes((b0, 0x80 | n))
    elif n < 65536:
        head = _HEAD16.pack(b0, 0xFE, n)
    else:
        head = _HEAD64.pack(b0, 0xFF, n)
    keys = _keys  # _keys.next(), inline
    if keys.at >= _KeyPool.SIZE:
        keys.pool, keys.at = os.urandom(_KeyPool.SIZE), 0
    at = keys.at
    keys.at = at + 4
    key = keys.pool[at : at + 4]
    return b"".join((head, key, apply_mask(payload, key))) if n else head + key


class WsConnection(asyncio.Protocol):
    """One client connection; see the module docstring. Built by :func:`ws_connect`."""

    def __init__(
        self,
        handshake: ClientProtocol,
        on_message: Callable[[bytes | str], None],
        *,
        max_size: int,
        ping_interval: float | None,
        ping_timeout: float | None,
        close_timeout: float,
        batch_bytes: int,
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self._hs: ClientProtocol | None = handshake
        self._hs_head = b""  # the handshake answer's bytes until its blank line
        self._hs_feed_all = False  # a refusal: its body goes to the handshake parser
        self.opened: asyncio.Future[None] = self._loop.create_future()
        self._lost: asyncio.Future[None] = self._loop.create_future()
        self.on_message = on_message
        self._max_size = max_size
        self._ping_interval = ping_interval
        self._ping_timeout = ping_timeout
        self._close_timeout = close_timeout
        self._batch_bytes = batch_bytes
        self._transport: asyncio.Transport | None = None
        self._state = _CONNECTING
        # incoming bytes not parsed yet: chunks, their total, the total the next step needs
        self._chunks: list[bytes] = []
        self._have = 0
        self._need = 0
        # a fragmented message being assembled: its opcode, parts and size
        self._frag_op = 0
        self._frag: list[bytes] | None = None
        self._frag_size = 0
        self._queue: list[bytes | str] = []
        # plain attributes, not properties: read for every answer
        self.open = False  # messages may be sent
        self.writing_paused = False  # the transport's buffer is full: ``await drain()``
        self._drain: asyncio.Future[None] | None = None
        self._pings: dict[bytes, asyncio.Future[None]] = {}
        self._keepalive: asyncio.Task[None] | None = None
        self._close_timer: asyncio.TimerHandle | None = None
        self._close_rcvd: tuple[int, str] | None = None
        self._close_sent: int | None = None
        self._error: BaseException | None = None  # what on_message raised, if anything
        self._discard = False  # the connection failed: nothing more is parsed

    # ------------------------------------------------------------------ public
    def send(self, message: bytes | str, *, now: bool = False) -> None:
        """Queue ``message`` (text for ``str``); written at the end of this loop turn, or
        at once with what is queued when ``now`` (the caller knows nothing else is coming
        to share the write). Raises :class:`WsClosed` when the connection is not open."""
        if self._state != _OPEN:
            raise self.closed_exc()
        if now:
            self._queue.append(message)
            self._flush()  # a flush scheduled meanwhile finds the queue empty
            return
        if not self._queue:
            self._loop.call_soon(self._flush)
        self._queue.append(message)

    async def drain(self) -> None:
        """Until the transport takes writes again (at once when it does)."""
        if self.writing_paused and self._state != _CLOSED:
            if self._drain is None:
                self._drain = self._loop.create_future()
            await asyncio.shield(self._drain)

    def ping(self, data: bytes | None = None) -> asyncio.Future[None]:
        """Send a ping; the future is done when its pong (or a later one) comes back."""
        if self._state != _OPEN:
            raise self.closed_exc()
        payload = data if data is not None else _keys.next()
        waiter = self._loop.create_future()
        self._pings[payload] = waiter
        self._write(frame_bytes(OP_PING, payload))
        return waiter

    async def close(self, code: int = CLOSE_NORMAL, reason: str = "") -> None:
        """The closing handshake (the queue is written first); returns once the TCP
        connection is closed, aborting it after ``close_timeout``."""
        if self._state == _CONNECTING:
            self._abort()
        elif self._state == _OPEN:
            self._flush()
            self._send_close(code, reason)
        if not self._lost.done():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._close_timeout):
                    await asyncio.shield(self._lost)
            self._abort()
            await asyncio.shield(self._lost)

    async def wait_closed(self) -> WsClosed:
        """Until the connection is closed; how it closed. Raises what ``on_message`` raised
        when that ended it."""
        await asyncio.shield(self._lost)
        if self._error is not None:
            raise self._error
        return self.closed_exc()

    def closed_exc(self) -> WsClosed:
        code, reason = self._close_rcvd or (CLOSE_ABNORMAL, "")
        return WsClosed(code, reason, self._close_sent)

    # ------------------------------------------------------------------ asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        assert self._hs is not None
        for data in self._hs.data_to_send():
            self._write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self._state = _CLOSED
        self.open = False
        self._queue = []
        if self._hs is not None:  # during the handshake: what the parser makes of the end
            with contextlib.suppress(Exception):
                self._hs.receive_eof()
            self._handshake_failed(ConnectionResetError("connection closed during the handshake"))
        for task_or_timer in (self._keepalive, self._close_timer):
            if task_or_timer is not None:
                task_or_timer.cancel()
        pings, self._pings = self._pings, {}
        for waiter in pings.values():
            waiter.cancel()  # no pong will come (cancelled: nobody need retrieve an error)
        self._resume_drain()
        if not self._lost.done():
            self._lost.set_result(None)

    def pause_writing(self) -> None:
        self.writing_paused = True

    def resume_writing(self) -> None:
        self.writing_paused = False
        self._resume_drain()

    def data_received(self, data: bytes) -> None:
        if self._state != _OPEN:
            if self._state == _CONNECTING:
                self._handshake_data(data)
                return
            if self._discard or self._close_rcvd is not None:
                return  # "a peer discards any further data received" (RFC 6455 1.4)
            # closing, ours sent: only the server's close frame matters now
        if self._chunks:  # the rest of an incomplete frame (or header)
            self._chunks.append(data)
            self._have += len(data)
            if self._have < self._need:
                return
            data = b"".join(self._chunks)
            self._chunks, self._have = [], 0
        try:
            self._parse(data)
        except _Fail as failed:
            self._fail(failed.code, failed.reason)
        except Exception as exc:  # on_message failed: the channel is broken
            if self._error is None:
                self._error = exc
            self._fail(CLOSE_INTERNAL, "internal error")

    def eof_received(self) -> bool | None:
        return None  # the transport closes itself; connection_lost follows

    # ------------------------------------------------------------------ parsing
    def _parse(self, data: bytes) -> None:
        n = len(data)
        at = 0
        max_size = self._max_size
        while n - at >= 2:
            b0 = data[at]
            b1 = data[at + 1]
            length = b1 & 0x7F
            pos = at + 2
            if length == 126:
                if n - pos < 2:
                    break
                length = _U16.unpack_from(data, pos)[0]
                pos += 2
            elif length == 127:
                if n - pos < 8:
                    break
                length = _U64.unpack_from(data, pos)[0]
                pos += 8
            end = pos + length
            opcode = b0 & 0x0F
            if self._state != _OPEN:  # closing: skip all but the server's close frame
                if end > n:
                    break
                at = end
                if opcode == OP_CLOSE:
                    self._close_frame(data[pos:end])
                    return
                continue
            if b1 & 0x80:
                raise _Fail(CLOSE_PROTOCOL, "incorrect masking")
            if b0 & 0x70:
                raise _Fail(CLOSE_PROTOCOL, "reserved bits must be 0")
            fin = b0 & 0x80
            if opcode >= OP_CLOSE:
                if length > 125:
                    raise _Fail(CLOSE_PROTOCOL, "control frame too long")
                if not fin:
                    raise _Fail(CLOSE_PROTOCOL, "fragmented control frame")
            elif length + self._frag_size > max_size:
                size = length + self._frag_size
                raise _Fail(CLOSE_TOO_BIG, f"message of {size} bytes over the {max_size} limit")
            if end > n:
                break
            payload = data[pos:end]
            at = end
            if 0 < opcode < 3:  # text or binary
                if self._frag is not None:
                    raise _Fail(CLOSE_PROTOCOL, "expected a continuation frame")
                if fin:
                    if opcode == OP_BINARY:
                        self.on_message(payload)
                    else:
                        self._deliver(opcode, payload)
                else:
                    self._frag_op, self._frag, self._frag_size = opcode, [payload], length
            elif opcode == OP_CONT:
                if self._frag is None:
                    raise _Fail(CLOSE_PROTOCOL, "unexpected continuation frame")
                self._frag.append(payload)
                self._frag_size += length
                if fin:
                    parts, self._frag, self._frag_size = self._frag, None, 0
                    self._deliver(self._frag_op, b"".join(parts))
            elif opcode == OP_PING:
                self._write(frame_bytes(OP_PONG, payload))
            elif opcode == OP_PONG:
                self._pong(payload)
            elif opcode == OP_CLOSE:
                self._close_frame(payload)
                return
            else:
                raise _Fail(CLOSE_PROTOCOL, f"invalid opcode {opcode}")
        if at < n and self._state != _CLOSED:
            rest = data[at:] if at else data
            self._chunks, self._have = [rest], len(rest)
            self._need = self._frame_end(rest)

    @staticmethod
    def _frame_end(rest: bytes) -> int:
        """How many bytes the incomplete frame at the start of ``rest`` needs in all (one
        more than there are while its header is incomplete)."""
        if len(rest) < 2:
            return len(rest) + 1
        length = rest[1] & 0x7F
        head = 2 + (2 if length == 126 else 8 if length == 127 else 0)
        if len(rest) < head:
            return len(rest) + 1
        if length == 126:
            length = _U16.unpack_from(rest, 2)[0]
        elif length == 127:
            length = _U64.unpack_from(rest, 2)[0]
        return head + length

    def _deliver(self, opcode: int, payload: bytes) -> None:
        if opcode == OP_TEXT:
            try:
                text = payload.decode()
            except UnicodeDecodeError as exc:
                raise _Fail(CLOSE_INVALID_DATA, f"invalid UTF-8: {exc.reason}") from None
            self.on_message(text)
        else:
            self.on_message(payload)

    def _pong(self, payload: bytes) -> None:
        if payload not in self._pings:
            return  # unsolicited: no answer expected (RFC 6455 5.5.3)
        # this pong answers its ping and the ones sent before it
        for key in list(self._pings):
            waiter = self._pings.pop(key)
            if not waiter.done():
                waiter.set_result(None)
            if key == payload:
                break

    def _close_frame(self, payload: bytes) -> None:
        try:
            close = Close.parse(payload)
        except ProtocolError as exc:
            raise _Fail(CLOSE_PROTOCOL, str(exc)) from None
        except UnicodeDecodeError:
            raise _Fail(CLOSE_INVALID_DATA, "close reason is not UTF-8") from None
        self._close_rcvd = (close.code, close.reason)
        if self._state != _OPEN:
            return  # the answer to ours: the server ends the TCP connection next
        if self._frag is not None:
            raise _Fail(CLOSE_PROTOCOL, "incomplete fragmented message")
        # "the endpoint typically echos the status code it received" (RFC 6455 5.5.1): echo
        # the bytes (an empty close frame stays empty)
        self._flush()
        self._write(frame_bytes(OP_CLOSE, payload))
        self._close_sent = close.code
        self._closing()

    # ------------------------------------------------------------------ writing
    def _write(self, data: bytes) -> None:
        transport = self._transport
        if transport is not None and not transport.is_closing():
            transport.write(data)

    def _flush(self) -> None:
        queue, self._queue = self._queue, []
        if not queue or self._state != _OPEN:
            return  # closed meanwhile: these answers are nobody's
        if len(queue) == 1:
            message = queue[0]
            if isinstance(message, str):
                self._write(frame_bytes(OP_TEXT, message.encode()))
            else:
                self._write(frame_bytes(OP_BINARY, message))
            return
        out: list[bytes] = []
        run: list[bytes] = []
        size = 0
        for message in queue:
            if isinstance(message, str):
                if run:
                    out.append(frame_bytes(OP_BINARY, b"".join(run)))
                    run, size = [], 0
                out.append(frame_bytes(OP_TEXT, message.encode()))
                continue
            if run and size + len(message) > self._batch_bytes:
                out.append(frame_bytes(OP_BINARY, b"".join(run)))
                run, size = [], 0
            run.append(message)
            size += len(message)
        if run:
            out.append(frame_bytes(OP_BINARY, b"".join(run)))
        self._write(b"".join(out))

    def _send_close(self, code: int, reason: str) -> None:
        self._write(frame_bytes(OP_CLOSE, Close(code, reason).serialize()))
        self._close_sent = code
        self._closing()

    def _closing(self) -> None:
        """Close frame sent: wait for the server to end the TCP connection, a while."""
        self._state = _CLOSING
        self.open = False
        self._queue = []
        self._frag = None
        if self._keepalive is not None:
            self._keepalive.cancel()
        if self._close_timer is None:
            self._close_timer = self._loop.call_later(self._close_timeout, self._abort)

    def _fail(self, code: int, reason: str) -> None:
        """Fail the connection (RFC 6455 7.1.7): a close frame, then wait for the server."""
        log.info("closing the WebSocket: %s %s", code, reason)
        self._discard = True
        self._chunks, self._have = [], 0
        if self._state == _OPEN:
            self._send_close(code, reason[:120])
        elif self._state == _CONNECTING:
            self._abort()

    def _abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    def _resume_drain(self) -> None:
        waiter, self._drain = self._drain, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # ------------------------------------------------------------------ handshake
    def _handshake_data(self, data: bytes) -> None:
        hs = self._hs
        assert hs is not None
        if self._hs_feed_all:  # a refusal's body
            hs.receive_data(data)
            self._handshake_progress()
            return
        head = self._hs_head + data
        end = head.find(b"\r\n\r\n")
        if end < 0:
            if len(head) > MAX_HANDSHAKE_BYTES:
                self._handshake_failed(InvalidMessage("handshake answer too long"))
                self._abort()
            else:
                self._hs_head = head
            return
        end += 4
        if head.startswith((b"HTTP/1.1 101 ", b"HTTP/1.0 101 ")):
            # the answer ends with its headers: the parser sees them only, frames are ours
            head, rest = head[:end], head[end:]
        else:
            rest = b""
            self._hs_feed_all = True
        self._hs_head = b""
        hs.receive_data(head)
        if self._handshake_progress() and rest:
            # frames that came with the answer: once ws_connect's caller has the connection
            # (its task resumes first: the ``opened`` callback was scheduled before this)
            self._loop.call_soon(self.data_received, rest)

    def _handshake_progress(self) -> bool:
        """Check the handshake parser: True once the connection is open."""
        hs = self._hs
        assert hs is not None
        hs.events_received()
        if hs.handshake_exc is not None:
            self._handshake_failed(hs.handshake_exc)
            self._abort()
            return False
        if hs.state is not State.OPEN:
            return False
        self._hs = None
        self._state = _OPEN
        self.open = True
        if self._ping_interval is not None:
            self._keepalive = self._loop.create_task(self._keepalive_loop())
        if not self.opened.done():
            self.opened.set_result(None)
        return True

    def _handshake_failed(self, exc: BaseException) -> None:
        hs, self._hs = self._hs, None
        if hs is not None and hs.handshake_exc is not None:
            exc = hs.handshake_exc
        if isinstance(exc, InvalidMessage) and isinstance(exc.__cause__, EOFError):
            exc = ConnectionResetError(f"connection closed during the handshake: {exc.__cause__}")
        if not self.opened.done():
            self.opened.set_exception(exc)

    async def _keepalive_loop(self) -> None:
        assert self._ping_interval is not None
        while self._state == _OPEN:
            await asyncio.sleep(self._ping_interval)
            if self._state != _OPEN:
                return
            waiter = self.ping()
            try:
                async with asyncio.timeout(self._ping_timeout):
                    await waiter
            except TimeoutError:
                self._fail(CLOSE_INTERNAL, "keepalive ping timeout")
                return
            except ConnectionError:
                return


async def ws_connect(
    url: str,
    on_message: Callable[[bytes | str], None],
    *,
    additional_headers: dict[str, str] | None = None,
    ssl: ssl_module.SSLContext | None = None,
    max_size: int = 1 << 20,
    open_timeout: float = 10.0,
    ping_interval: float | None = 20.0,
    ping_timeout: float | None = 20.0,
    close_timeout: float = 10.0,
    batch_bytes: int = 1 << 20,
) -> WsConnection:
    """Open a WebSocket to ``url`` (``ws://`` or ``wss://``, where ``ssl`` is the context,
    the default one when None) and return it open; ``on_message`` gets each message from
    then on. Raises ``websockets``' ``InvalidStatus`` when the server refuses the upgrade,
    ``InvalidHandshake`` subclasses for a bad answer, OSError / TimeoutError otherwise."""
    wsuri = parse_uri(url)
    handshake = ClientProtocol(wsuri, max_size=max_size)
    request = handshake.connect()
    if additional_headers:
        request.headers.update(additional_headers)
    request.headers.setdefault("User-Agent", USER_AGENT)
    handshake.send_request(request)
    context: ssl_module.SSLContext | None = None
    if wsuri.secure:
        context = ssl if ssl is not None else ssl_module.create_default_context()
    loop = asyncio.get_running_loop()

    def factory() -> WsConnection:
        return WsConnection(
            handshake,
            on_message,
            max_size=max_size,
            ping_interval=ping_interval,
            ping_timeout=ping_timeout,
            close_timeout=close_timeout,
            batch_bytes=batch_bytes,
        )

    conn: WsConnection | None = None
    try:
        async with asyncio.timeout(open_timeout):
            kwargs: dict[str, Any] = {"ssl": context}
            if context is not None:
                kwargs["server_hostname"] = wsuri.host
            _, conn = await loop.create_connection(factory, wsuri.host, wsuri.port, **kwargs)
            await conn.opened
    except BaseException:
        if conn is not None:
            conn._abort()
        raise
    return conn
