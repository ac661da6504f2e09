"""A small HTTP/1.1 client for the one call the runner makes per passed-through request:
``POST /v2/models/{m}/versions/{v}/infer`` to the local Triton, bytes in, bytes out.

A general client (aiohttp, httpx) spends more CPU per request than the request costs
Triton: cookie jars, redirect and auth handling, header multidicts, stream readers. Here a
pool of keep-alive connections (asyncio protocols, parsed with ``httptools``, what uvicorn
uses) writes the request head and body in one ``write`` and resolves a future with the
status, the few headers the runner forwards and the body.

- One request per connection at a time; a connection goes back to the pool after a
  complete answer that keeps it alive, and is closed after anything else (an error, a
  cancelled or timed-out call: its answer would arrive for nobody).
- A reused connection that the server closed before answering anything (its keep-alive
  ended as the request left) is retried once on a new connection: the request never
  reached Triton, so it still runs at most once.
- Connection failures raise ``ConnectionError`` (the caller's transient Triton errors); a
  call past its ``timeout_s`` raises ``TimeoutError`` (one timer per call, no task).
"""

from __future__ import annotations

import asyncio
import contextlib

import httptools

__all__ = ["TritonHttp", "TritonHttpAnswer"]

# Response headers the runner passes on; others are not kept.
_KEPT = frozenset({b"content-type", b"inference-header-content-length"})
MAX_IDLE = 64


class TritonHttpAnswer:
    __slots__ = ("body", "headers", "status")

    def __init__(self, status: int, headers: dict[bytes, bytes], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    def header(self, name: str) -> str | None:
        value = self.headers.get(name.lower().encode())
        return None if value is None else value.decode("latin-1")


class _Connection(asyncio.Protocol):
    """One keep-alive connection; ``request`` answers one request at a time."""

    def __init__(self) -> None:
        # made by create_connection, in the loop that uses it (each get_running_loop() costs
        # a getpid() system call: taken once here, not per request)
        self._loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.received = False  # any byte of the current answer
        self._parser = httptools.HttpResponseParser(self)
        self._waiter: asyncio.Future[TritonHttpAnswer] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._headers: dict[bytes, bytes] = {}
        self._body: list[bytes] = []

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.received = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(ConnectionError(f"Triton's answer is not HTTP: {exc}"))
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._fail(ConnectionResetError(f"Triton closed the connection: {exc or 'EOF'}"))

    # httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        if name in _KEPT:
            self._headers[name] = value

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        answer = TritonHttpAnswer(
            self._parser.get_status_code(),
            self._headers,
            self._body[0] if len(self._body) == 1 else b"".join(self._body),
        )
        self._headers, self._body = {}, []
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._parser.should_keep_alive():
            self.close()
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(answer)

    # ours
    def request(
        self, data: bytes, deadline: float | None = None
    ) -> asyncio.Future[TritonHttpAnswer]:
        """Write ``data``; the future of its answer, failed with TimeoutError at
        ``deadline`` (event-loop time) if none came by then."""
        assert self.transport is not None and self._waiter is None
        self.received = False
        loop = self._loop
        self._waiter = loop.create_future()
        if deadline is not None:
            self._timer = loop.call_at(deadline, self._timed_out)
        self.transport.write(data)
        return self._waiter

    def _timed_out(self) -> None:
        self._timer = None
        self._fail(TimeoutError())
        self.close()  # its answer would arrive for nobody

    def _fail(self, exc: Exception) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)

    def close(self) -> None:
        self.closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.transport is not None:
            self.transport.close()


class TritonHttp:
    """Keep-alive connections to one Triton HTTP endpoint (``host``:``port``)."""

    def __init__(self, host: str, port: int, *, connect_timeout_s: float = 10.0) -> None:
        self._host = host
        self._port = port
        self._connect_timeout_s = connect_timeout_s
        self._idle: list[_Connection] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._host_header = f"Host: {host}:{port}\r\n".encode()

    async def _connect(self, deadline: float | None) -> _Connection:
        loop = asyncio.get_running_loop()
        limit = self._connect_timeout_s
        if deadline is not None and deadline - loop.time() < limit:
            limit = max(0.0, deadline - loop.time())  # the call's own timeout comes first
            connect_timeout = False
        else:
            connect_timeout = True
        try:
            _, conn = await asyncio.wait_for(
                loop.create_connection(_Connection, self._host, self._port), limit
            )
        except TimeoutError as exc:
            if not connect_timeout:
                raise
            raise ConnectionError(
                f"connecting to Triton at {self._host}:{self._port} timed out"
            ) from exc
        return conn

    async def post(
        self,
        path: str,
        body: bytes,
        headers: dict[str, str] | bytes,
        timeout_s: float | None = None,
    ) -> TritonHttpAnswer:
        """``POST path`` with ``body`` and ``headers`` (a dict, or the header lines as
        bytes, each ending in CRLF); the answer (any status). TimeoutError after
        ``timeout_s`` (connecting included)."""
        if isinstance(headers, bytes):
            extra = headers
        else:
            extra = "".join(f"{name}: {value}\r\n" for name, value in headers.items()).encode(
                "latin-1"
            )
        data = b"".join(
            (
                b"POST %s HTTP/1.1\r\n" % path.encode(),
                self._host_header,
                extra,
                b"Content-Length: %d\r\n\r\n" % len(body),
                body,
            )
        )
        deadline = None
        if timeout_s is not None:
            if self._loop is None:  # the loop of the first call: the pool's connections' too
                self._loop = asyncio.get_running_loop()
            deadline = self._loop.time() + timeout_s
        for attempt in range(2):
            conn, reused = None, False
            while self._idle:
                candidate = self._idle.pop()
                if not candidate.closed:
                    conn, reused = candidate, True
                    break
            if conn is None:
                conn = await self._connect(deadline)
            try:
                answer = await conn.request(data, deadline)
            except ConnectionResetError:
                conn.close()
                if reused and not conn.received and attempt == 0:
                    continue  # the server ended an idle connection: Triton never saw it
                raise
            except BaseException:
                conn.close()  # cancelled, timed out, garbled: its answer is nobody's
                raise
            if not conn.closed:
                if len(self._idle) < MAX_IDLE:
                    self._idle.append(conn)
                else:
                    conn.close()
            return answer
        raise AssertionError("unreachable")  # pragma: no cover

    def close(self) -> None:
        idle, self._idle = self._idle, []
        for conn in idle:
            with contextlib.suppress(Exception):
                conn.close()
