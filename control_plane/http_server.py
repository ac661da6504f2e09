"""The HTTP listener of ``serve``: uvicorn with limits on slow clients, and the optional
separate ``/metrics`` listener.

uvicorn on its own keeps a connection that trickles its headers open forever and waits as
long as a client likes for a body. Here:

- **Headers**: a connection must finish a request's headers within
  ``http_header_timeout_s`` of opening, or of its previous response (``header_timeout``
  wraps uvicorn's protocol class); else it is closed.
- **Bodies**: ``BodyTimeout`` waits at most ``http_body_timeout_s`` for each chunk and,
  after that grace, needs an average of ``http_body_min_rate`` bytes/s; a slower body gets
  408 (``SlowRequest``, answered by the app's one error handler) and the connection is
  closed. The rate (not a total time) is bounded, so a large
  upload on a fast link is never cut.
- **Keep-alive** idle connections close after ``http_keep_alive_s``; at most
  ``http_max_concurrency`` connections and requests at once (more get 503 at once).

Behind a proxy or load balancer these limits still protect the process; the proxy should
apply its own (docs/security.md#slow-clients).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any, Protocol

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from control_plane.api.errors import error_response
from control_plane.errors import SlowRequest
from control_plane.metrics import CONTENT_TYPE, Metrics
from control_plane.settings import Settings

__all__ = [
    "BodyTimeout",
    "CoalescingTransport",
    "header_timeout",
    "metrics_server",
    "server_config",
]


class ShortPath(Protocol):
    """A request the listener answers without the ASGI stack (``kserve_fast.KServeFastPath``):
    ``prepare`` looks at a request whose head is complete and returns what ``run`` needs, or
    None for the ordinary stack."""

    def prepare(self, scope: Scope) -> Any: ...

    async def run(self, cycle: Any, app: ASGIApp, call: Any) -> None: ...


def header_timeout(
    base: type[asyncio.Protocol], timeout_s: float, short_path: ShortPath | None = None
) -> type[asyncio.Protocol]:
    """``base`` (uvicorn's h11 or httptools protocol) closing a connection whose request
    headers are not complete ``timeout_s`` after it opened or after its last response.

    ``short_path``: asked about each request before the app is started on it (uvicorn's
    ``_start_asgi_task`` of its httptools protocol, the one ``serve`` uses; its h11 protocol,
    used only where httptools is not installed, starts the app itself, so there every request
    takes the ordinary stack); a request it takes runs ``short_path.run`` in the app's place
    (same task bookkeeping, so shutdown and the concurrency limit see it). A ``prepare`` that
    fails leaves the request to the ordinary stack."""

    class HeaderTimeoutProtocol(base):  # type: ignore[valid-type,misc]
        _header_timer: asyncio.TimerHandle | None = None

        def _start_asgi_task(self, cycle: Any, app: Any) -> None:
            call = None
            if short_path is not None and app is self.app:  # not the over-limit 503
                try:
                    call = short_path.prepare(cycle.scope)
                except Exception:
                    logging.getLogger(__name__).exception("the short path's prepare failed")
            if call is None or short_path is None:
                super()._start_asgi_task(cycle, app)
                return
            task = self.loop.create_task(short_path.run(cycle, app, call))
            task.add_done_callback(self.tasks.discard)
            self.tasks.add(task)

        def _arm(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
            self._header_timer = self.loop.call_later(timeout_s, self._header_deadline)

        def _header_deadline(self) -> None:
            self._header_timer = None
            transport = getattr(self, "transport", None)
            if transport is None or transport.is_closing():
                return
            if transport.get_protocol() is not self:  # upgraded to a WebSocket
                return
            cycle = getattr(self, "cycle", None)
            if cycle is None or cycle.response_complete:  # no request has its headers yet
                transport.close()

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            # One write per loop turn: a response's head and body (and a WebSocket's frames
            # of one turn, once upgraded) leave in one segment.
            self.transport = CoalescingTransport(transport, self.loop)
            self._arm()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None
            super().connection_lost(exc)

    HeaderTimeoutProtocol.__name__ = f"HeaderTimeout{base.__name__}"
    return HeaderTimeoutProtocol


class CoalescingTransport:
    """A transport whose writes of one event-loop turn go out as one ``write``.

    uvicorn writes a response's head and its body separately: two system calls and, for
    the client, often two wake-ups, per response. Here they are joined and written once the
    current callback ends (``call_soon``); ``close``, ``write_eof`` and the buffer size see
    what is pending. Everything else is the wrapped transport's."""

    __slots__ = ("_armed", "_loop", "_pending", "_transport", "is_closing")

    def __init__(self, transport: Any, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] = []
        self._armed = False
        # the wrapped transport's own (asked several times per response): no call around it
        self.is_closing: Callable[[], bool] = transport.is_closing

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not data:
            return
        self._pending.append(bytes(data))
        if not self._armed:
            self._armed = True
            self._loop.call_soon(self._flush)

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def _flush(self) -> None:
        self._armed = False
        pending = self._pending
        if not pending:
            return
        data = pending[0] if len(pending) == 1 else b"".join(pending)
        pending.clear()
        if not self._transport.is_closing():
            self._transport.write(data)

    def get_write_buffer_size(self) -> int:
        return int(self._transport.get_write_buffer_size()) + sum(map(len, self._pending))

    def write_eof(self) -> None:
        self._flush()
        self._transport.write_eof()

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def abort(self) -> None:
        self._pending.clear()
        self._transport.abort()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class BodyTimeout:
    """ASGI middleware: 408 for a request body slower than the settings allow (see the
    module docstring). WebSockets and lifespan pass through."""

    def __init__(self, app: ASGIApp, idle_s: float, min_rate: int) -> None:
        self.app = app
        self.idle_s = idle_s
        self.min_rate = min_rate
        self._message = SlowRequest.message_for(idle_s, min_rate)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.monotonic()
        received = 0
        more = True
        # uvicorn's request cycle, when ``receive`` and ``send`` are its own: its
        # ``message_event`` is set when ``receive`` has a message at hand (no wait, so no
        # timer), and it knows whether the response started (no ``send`` wrapper to track it)
        cycle: Any = getattr(send, "__self__", None)
        if getattr(receive, "__self__", None) is not cycle or not hasattr(cycle, "message_event"):
            cycle = None
        sent_start = False

        async def timed_receive() -> Message:
            nonlocal received, more
            if not more:  # the body is read: what follows is the disconnect, wait freely
                return await receive()
            if cycle is not None and cycle.message_event.is_set():
                message = await receive()  # at hand: returns without waiting
            else:
                try:
                    async with asyncio.timeout(self.idle_s):  # no task per read (wait_for's)
                        message = await receive()
                except TimeoutError:
                    raise SlowRequest(self._message) from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                more = bool(message.get("more_body"))
                elapsed = time.monotonic() - started
                if more and elapsed > self.idle_s and received < self.min_rate * elapsed:
                    raise SlowRequest(self._message)
            return message

        async def tracked_send(message: Message) -> None:
            nonlocal sent_start
            if message["type"] == "http.response.start":
                sent_start = True
            await send(message)

        try:
            await self.app(scope, timed_receive, send if cycle is not None else tracked_send)
        except SlowRequest as exc:  # raised where no handler of the app saw it
            if cycle.response_started if cycle is not None else sent_start:
                raise
            response = error_response(exc.code, exc.message, headers={"Connection": "close"})
            await response(scope, receive, send)


def server_config(
    app: ASGIApp,
    settings: Settings,
    host: str,
    port: int,
    short_path: ShortPath | None = None,
    **kw: Any,
) -> Any:
    """The uvicorn config of the API listener, with the slow-client limits of ``settings``
    (``kw``: further ``uvicorn.Config`` arguments) and the requests ``short_path`` answers
    without the ASGI stack."""
    from uvicorn.protocols.http.auto import AutoHTTPProtocol

    from control_plane.api.channel_direct import direct_ws_protocol

    kw.setdefault("ws", direct_ws_protocol())  # runner channels skip the ASGI queue
    guarded = BodyTimeout(app, settings.http_body_timeout_s, settings.http_body_min_rate)
    return uvicorn.Config(
        guarded,
        host=host,
        port=port,
        http=header_timeout(AutoHTTPProtocol, settings.http_header_timeout_s, short_path),
        timeout_keep_alive=settings.http_keep_alive_s,
        limit_concurrency=settings.http_max_concurrency,
        **kw,
    )


class _QuietServer(uvicorn.Server):
    """A second uvicorn server in the same process: the main one handles the signals."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def metrics_app(metrics: Metrics) -> Starlette:
    """Only ``GET /metrics``, without a token (for the private ``metrics_listen``)."""

    async def render(request: Request) -> Response:
        from starlette.concurrency import run_in_threadpool

        return Response(await run_in_threadpool(metrics.render), media_type=CONTENT_TYPE)

    return Starlette(routes=[Route("/metrics", render, methods=["GET"])])


def metrics_server(metrics: Metrics, listen: str, settings: Settings) -> uvicorn.Server:
    """The ``metrics_listen`` server (``host:port``); run its ``serve()`` next to the API's."""
    host, _, port = listen.rpartition(":")
    config = server_config(
        metrics_app(metrics),
        settings,
        host.strip("[]"),
        int(port),
        lifespan="off",
        log_level="warning",
    )
    return _QuietServer(config)
