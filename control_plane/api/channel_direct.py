"""The runner channel's messages without the ASGI queue.

Each synchronous inference crosses the runner's channel twice (the request out, the answer
back). Through ASGI, an answer is parsed by uvicorn's WebSocket protocol, queued, picked up
by the channel's task (one task wake-up per message), handed through Starlette's
``WebSocket.receive`` and only then resolved; a request goes out through Starlette's and
uvicorn's ``send`` coroutines. Here the listener's WebSocket protocol (uvicorn's sans-I/O
one, subclassed) offers the ASGI app a link in the scope's ``extensions``
(:data:`EXTENSION`); the channel route (``routes_channel.py``) takes it once it has accepted
the connection, and from then on:

- every complete data message is handed to the route's callback straight from
  ``data_received`` (in order, synchronously; the dispatcher resolves the waiting request
  there);
- frames are written by :class:`FrameBatcher`: those of one event-loop turn go out together
  once the turn ends, consecutive binary frames joined in one WebSocket message (as
  ``gpufleet.channel.Outbox`` does over ASGI), no task per send.

Everything else (the handshake, ping/pong, the close handshake, disconnects, the size
limit) stays uvicorn's: the route still reads ``websocket.disconnect`` from ASGI. Without
the sans-I/O protocol (an older uvicorn, ``--ws`` set otherwise) there is no link and the
route keeps the ASGI path.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

__all__ = ["EXTENSION", "FrameBatcher", "direct_ws_protocol"]

EXTENSION = "gpufleet.channel.direct"

Handler = Callable[[bytes | str], None]


class DirectLink:
    """What the channel route gets from the scope: :meth:`attach` a message callback,
    :meth:`write` frames synchronously."""

    __slots__ = ("_proto",)

    def __init__(self, proto: Any) -> None:
        self._proto = proto

    def attach(self, on_message: Handler) -> None:
        """Hand every data message from now on to ``on_message`` instead of ASGI."""
        self._proto.on_direct_message = on_message

    @property
    def closed(self) -> bool:
        p = self._proto
        return bool(p.close_sent or p.transport.is_closing())

    def write(self, data: bytes | str) -> None:
        """One WebSocket message; ``ConnectionError`` once the connection is closing."""
        p = self._proto
        if p.close_sent or p.transport.is_closing():  # (``closed``, without its call)
            raise ConnectionError("the channel is closed")
        try:
            if isinstance(data, str):
                p.conn.send_text(data.encode())
            else:
                p.conn.send_binary(data)
        except Exception as exc:  # websockets' InvalidState: closing meanwhile
            raise ConnectionError(f"the channel is closed: {exc}") from exc
        p.transport.write(b"".join(p.conn.data_to_send()))

    def abort(self) -> None:
        """Close the connection (a write failed in a way that leaves it unusable)."""
        self._proto.transport.close()

    async def writable(self) -> None:
        """Return once the transport takes writes again (the peer reads too slowly)."""
        event: asyncio.Event = self._proto.writable
        if not event.is_set():
            await event.wait()


def direct_ws_protocol() -> Any:
    """uvicorn's sans-I/O WebSocket protocol with the direct link, or "auto" when this
    uvicorn has no such protocol."""
    try:
        from uvicorn.protocols.websockets.websockets_sansio_impl import (
            WebSocketsSansIOProtocol,
        )
    except ImportError:  # pragma: no cover - uvicorn before 0.35
        return "auto"

    class DirectWebSocketProtocol(WebSocketsSansIOProtocol):
        on_direct_message: Handler | None = None

        def handle_connect(self, event: Any) -> None:
            super().handle_connect(event)
            scope = getattr(self, "scope", None)
            if scope is not None and self.response.status_code == 101:
                scope.setdefault("extensions", {})[EXTENSION] = DirectLink(self)

        def send_receive_event_to_app(self) -> None:
            handler = self.on_direct_message
            if handler is None or self.close_sent:
                super().send_receive_event_to_app()
                return
            frames = self.frames
            data = bytes(frames[0]) if len(frames) == 1 else b"".join(frames)
            self.frames = []
            message: bytes | str = data
            if self.curr_msg_data_type == "text":
                try:
                    message = data.decode()
                except UnicodeDecodeError:
                    self.logger.warning("invalid UTF-8 in a text message on a runner channel")
                    self.conn.send_close(1007)
                    self.handle_parser_exception()
                    return
            try:
                handler(message)
            except Exception:
                log.exception("a runner channel message failed")

    return DirectWebSocketProtocol


class FrameBatcher:
    """Frames to one channel in order, written when the current event-loop turn ends:
    consecutive binary frames of a turn go in one WebSocket message (up to ``max_bytes``;
    the first always goes), a text frame in its own. ``await send(frame)`` queues it and
    returns at once, waiting only while the transport's buffer is full; it raises
    ``ConnectionError`` once the channel is closed. A write that fails later closes the
    connection, which fails the requests in flight on it (the dispatcher's ``detach``)."""

    def __init__(self, link: DirectLink, max_bytes: int = 1 << 20) -> None:
        self._link = link
        self._proto = link._proto  # (read on every send: ``link.closed``, ``link.writable``)
        self._max_bytes = max_bytes
        self._pending: list[bytes | str] = []
        self._armed = False
        self._loop = asyncio.get_running_loop()  # built on the channel's loop, used there

    async def send(self, frame: bytes | str) -> None:
        p = self._proto
        if p.close_sent or p.transport.is_closing():  # ``link.closed``, inline
            raise ConnectionError("the channel is closed")
        self._pending.append(frame)
        if not self._armed:
            self._armed = True
            self._loop.call_soon(self._flush)
        if not p.writable.is_set():  # ``link.writable()``, awaited only when it waits
            await self._link.writable()

    def _flush(self) -> None:
        self._armed = False
        pending, self._pending = self._pending, []
        try:
            at = 0
            while at < len(pending):
                frame = pending[at]
                at += 1
                if isinstance(frame, bytes):
                    parts, size = [frame], len(frame)
                    while at < len(pending):
                        more = pending[at]
                        if not isinstance(more, bytes) or size + len(more) > self._max_bytes:
                            break
                        parts.append(more)
                        size += len(more)
                        at += 1
                    frame = parts[0] if len(parts) == 1 else b"".join(parts)
                self._link.write(frame)
        except ConnectionError:
            pass  # closing: the disconnect fails what is in flight
        except Exception:
            log.exception("writing to a runner channel failed")
            self._link.abort()
