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
- Connection failures raise ``ConnectionError`` (the caller's transient Triton errors).
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
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.received = False  # any byte of the current answer
        self._parser = httptools.HttpResponseParser(self)
        self._waiter: asyncio.Future[TritonHttpAnswer] | None = None
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
        if not self._parser.should_keep_alive():
            self.close()
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(answer)

    # ours
    def request(self, data: bytes) -> asyncio.Future[TritonHttpAnswer]:
        assert self.transport is not None and self._waiter is None
        self.received = False
        self._waiter = asyncio.get_running_loop().create_future()
        self.transport.write(data)
        return self._waiter

    def _fail(self, exc: Exception) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class TritonHttp:
    """Keep-alive connections to one Triton HTTP endpoint (``host``:``port``)."""

    def __init__(self, host: str, port: int, *, connect_timeout_s: float = 10.0) -> None:
        self._host = host
        self._port = port
        self._connect_timeout_s = connect_timeout_s
        self._idle: list[_Connection] = []
        self._host_header = f"Host: {host}:{port}\r\n".encode()

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            _, conn = await asyncio.wait_for(
                loop.create_connection(_Connection, self._host, self._port),
                self._connect_timeout_s,
            )
        except TimeoutError as exc:
            raise ConnectionError(
                f"connecting to Triton at {self._host}:{self._port} timed out"
            ) from exc
        return conn

    async def post(self, path: str, body: bytes, headers: dict[str, str]) -> TritonHttpAnswer:
        """``POST path`` with ``body`` and ``headers``; the answer (any status)."""
        head = [b"POST ", path.encode(), b" HTTP/1.1\r\n", self._host_header]
        for name, value in headers.items():
            head.append(f"{name}: {value}\r\n".encode("latin-1"))
        head.append(b"Content-Length: %d\r\n\r\n" % len(body))
        data = b"".join(head) + body
        for attempt in range(2):
            conn, reused = None, False
            while self._idle:
                candidate = self._idle.pop()
                if not candidate.closed:
                    conn, reused = candidate, True
                    break
            if conn is None:
                conn = await self._connect()
            try:
                answer = await conn.request(data)
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
