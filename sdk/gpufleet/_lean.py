"""Lean HTTP/1.1 transports for the SDK's API calls over plain ``http://`` (what a loopback
or in-cluster control plane is reached by): :class:`LeanTransport` for
:class:`~gpufleet.AsyncClient`, :class:`LeanSyncTransport` for :class:`~gpufleet.Client`.

httpx's default transport (httpcore, anyio, h11) spends about a millisecond and a half of
CPU per call on connection-pool bookkeeping, cancel scopes and a pure-Python state machine;
at one call at a time that CPU is the caller's latency. These transports keep a pool of
keep-alive connections (asyncio protocols; blocking sockets), write each request in one
``write`` and parse the answer themselves: status line, headers, a ``Content-Length``,
chunked or read-until-close body.

What it does not take, it hands to the default transport (``fallback``), so behaviour
stays httpx's: ``https://`` URLs (TLS), request bodies that are streams (file uploads),
and event-stream answers (``Accept: text/event-stream``). The client uses it only when
httpx itself would use its default transport: no ``transport`` given, no proxy in the
environment (see :func:`usable`).

Errors are httpx's: ``ConnectError`` / ``ConnectTimeout`` (the request was not sent),
``PoolTimeout``, ``WriteError`` / ``WriteTimeout``, ``ReadError`` / ``ReadTimeout``,
``RemoteProtocolError`` (the server
closed the connection or answered something that is not HTTP/1.1). A connection is reused
only after a complete answer that keeps it alive, and not after ``keepalive_expiry``
seconds idle (httpx's 5 s default); any error, timeout or cancellation closes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import select
import socket
import threading
import time
import urllib.request

import httpx

__all__ = ["LeanSyncTransport", "LeanTransport", "takes", "usable"]

_CRLF2 = b"\r\n\r\n"
MAX_HEAD_BYTES = 64 * 1024


def usable(base_url: str) -> bool:
    """Whether API calls to ``base_url`` may go through :class:`LeanTransport`: plain HTTP
    and no proxy settings in the environment (httpx would route through the proxy)."""
    netloc = base_url[len("http://") :].partition("/")[0]
    return base_url.startswith("http://") and "@" not in netloc and not urllib.request.getproxies()


class _Answer:
    __slots__ = ("body", "headers", "keep_alive", "reason", "status")

    def __init__(
        self,
        status: int,
        reason: bytes,
        headers: list[tuple[bytes, bytes]],
        body: bytes,
        keep_alive: bool,
    ) -> None:
        self.status = status
        self.reason = reason
        self.headers = headers
        self.body = body
        self.keep_alive = keep_alive


class _Parser:
    """One HTTP/1.1 answer from the bytes fed to it: status line, headers, then a
    ``Content-Length``, chunked or read-until-close body (none for HEAD, 204, 304)."""

    def __init__(self, head_only: bool) -> None:
        self.buf = bytearray()
        self.head: tuple[int, bytes, list[tuple[bytes, bytes]]] | None = None
        self._no_body = head_only
        self._length: int | None = None  # body bytes expected (Content-Length)
        self._chunked = False
        self._until_close = False
        self._keep_alive = True
        self._chunks: list[bytes] = []

    def feed(self, data: bytes) -> _Answer | None:
        """The answer once complete; ValueError when the bytes are not HTTP/1.1."""
        self.buf += data
        return self._parse()

    def eof(self) -> _Answer | None:
        """The connection ended: the answer when its body runs until the close."""
        if self._until_close and self.head is not None:
            body = bytes(self.buf)
            self.buf.clear()
            return self._finish(body)
        return None

    def _parse(self) -> _Answer | None:
        while self.head is None:
            end = self.buf.find(_CRLF2)
            if end < 0:
                if len(self.buf) > MAX_HEAD_BYTES:
                    raise ValueError("header section too large")
                return None
            lines = bytes(self.buf[:end]).split(b"\r\n")
            del self.buf[: end + 4]
            version, _, rest = lines[0].partition(b" ")
            code, _, reason = rest.partition(b" ")
            if not version.startswith(b"HTTP/1.") or len(code) != 3:
                raise ValueError(f"status line {lines[0][:100]!r}")
            status = int(code)
            if 100 <= status < 200:  # an interim answer (never asked for): skip it
                continue
            headers: list[tuple[bytes, bytes]] = []
            length: int | None = None
            chunked = False
            keep_alive = version == b"HTTP/1.1"
            for line in lines[1:]:
                name, sep, value = line.partition(b":")
                if not sep:
                    raise ValueError(f"header line {line[:100]!r}")
                name, value = name.strip(), value.strip()
                headers.append((name, value))
                lower = name.lower()
                if lower == b"content-length":
                    length = int(value)
                elif lower == b"transfer-encoding":
                    chunked = value.lower().endswith(b"chunked")
                elif lower == b"connection":
                    tokens = value.lower()
                    if b"close" in tokens:
                        keep_alive = False
                    elif b"keep-alive" in tokens:
                        keep_alive = True
            self.head = (status, reason, headers)
            self._no_body = self._no_body or status in (204, 304)
            self._chunked = chunked and not self._no_body
            self._length = None if chunked else length
            self._until_close = not self._no_body and not chunked and length is None
            self._keep_alive = keep_alive and not self._until_close
        if self._no_body:
            return self._finish(b"")
        if self._chunked:
            return self._parse_chunks()
        if self._length is not None and len(self.buf) >= self._length:
            body = bytes(self.buf[: self._length])
            del self.buf[: self._length]
            return self._finish(body)
        return None

    def _parse_chunks(self) -> _Answer | None:
        buf = self.buf
        while True:
            end = buf.find(b"\r\n")
            if end < 0:
                return None
            size = int(bytes(buf[:end]).partition(b";")[0].strip(), 16)
            if size == 0:  # the last chunk, then trailer lines up to an empty one
                if len(buf) < end + 4:
                    return None
                if buf[end + 2 : end + 4] == b"\r\n":
                    del buf[: end + 4]
                else:
                    tail = buf.find(_CRLF2, end + 2)
                    if tail < 0:
                        return None
                    del buf[: tail + 4]
                return self._finish(b"".join(self._chunks))
            if len(buf) < end + 2 + size + 2:
                return None
            self._chunks.append(bytes(buf[end + 2 : end + 2 + size]))
            del buf[: end + 2 + size + 2]

    def _finish(self, body: bytes) -> _Answer:
        assert self.head is not None
        status, reason, headers = self.head
        # bytes after the answer: a server talking out of turn (nothing was pipelined)
        keep_alive = self._keep_alive and not self.buf
        return _Answer(status, reason, headers, body, keep_alive)


class _Conn(asyncio.Protocol):
    """One keep-alive connection: one request at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.idle_since = 0.0
        self._parser: _Parser | None = None
        self._waiter: asyncio.Future[_Answer] | None = None

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        parser = self._parser
        if parser is None:  # nothing asked: a server talking out of turn
            self.close()
            return
        try:
            answer = parser.feed(data)
        except ValueError as exc:
            self._fail(httpx.RemoteProtocolError(f"malformed HTTP answer: {exc}"))
            self.close()
            return
        if answer is not None:
            self._done(answer)

    def eof_received(self) -> bool | None:
        if self._parser is not None:
            answer = self._parser.eof()
            if answer is not None:
                self._done(answer)
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        started = self._parser is not None and self._parser.head is not None
        what = "mid-response" if started else "without sending a response"
        self._fail(httpx.RemoteProtocolError(f"Server disconnected {what}: {exc or 'EOF'}"))

    def _done(self, answer: _Answer) -> None:
        self._parser = None
        if not answer.keep_alive:
            self.close()
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(answer)

    # ours
    def send(self, data: bytes, head_only: bool) -> asyncio.Future[_Answer]:
        assert self.transport is not None and self._waiter is None
        self._parser = _Parser(head_only)
        self._waiter = asyncio.get_running_loop().create_future()
        self.transport.write(data)
        return self._waiter

    def _fail(self, exc: Exception) -> None:
        self._parser = None
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class _SyncConn:
    """One keep-alive connection of :class:`LeanSyncTransport` (a blocking socket)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.closed = False
        self.idle_since = 0.0

    def stale(self) -> bool:
        """Readable while idle: the server closed it (or talks out of turn)."""
        try:
            readable, _, _ = select.select([self.sock], [], [], 0)
        except (OSError, ValueError):
            return True
        return bool(readable)

    def exchange(self, request: httpx.Request, data: bytes, t: dict[str, float | None]) -> _Answer:
        parser = _Parser(request.method == "HEAD")
        sock = self.sock
        try:
            sock.settimeout(t["write"])
            sock.sendall(data)
        except TimeoutError as exc:
            raise httpx.WriteTimeout("timed out sending the request", request=request) from exc
        except OSError as exc:
            raise httpx.WriteError(str(exc), request=request) from exc
        sock.settimeout(t["read"])
        while True:
            try:
                chunk = sock.recv(65536)
            except TimeoutError as exc:
                raise httpx.ReadTimeout("timed out waiting for the answer",
                                        request=request) from exc  # fmt: skip
            except OSError as exc:
                raise httpx.ReadError(str(exc), request=request) from exc
            try:
                answer = parser.eof() if not chunk else parser.feed(chunk)
            except ValueError as exc:
                raise httpx.RemoteProtocolError(f"malformed HTTP answer: {exc}",
                                                request=request) from exc  # fmt: skip
            if answer is not None:
                return answer
            if not chunk:
                what = "mid-response" if parser.head is not None else "without sending a response"
                raise httpx.RemoteProtocolError(f"Server disconnected {what}", request=request)

    def close(self) -> None:
        self.closed = True
        with contextlib.suppress(OSError):
            self.sock.close()


_HTTPX_LOG = logging.getLogger("httpx")


def _finish_direct(request: httpx.Request, response: httpx.Response, start: float) -> None:
    """What ``httpx.Client.send`` adds to a response, for :meth:`LeanTransport.send`."""
    response.request = request
    response.read()  # the body is in memory already: decoded (Content-Encoding) here
    response.elapsed = datetime.timedelta(seconds=time.perf_counter() - start)
    if _HTTPX_LOG.isEnabledFor(logging.INFO):  # the line httpx's client logs per request
        _HTTPX_LOG.info(
            'HTTP Request: %s %s "%s %d %s"',
            request.method,
            request.url,
            response.http_version,
            response.status_code,
            response.reason_phrase,
        )


def takes(request: httpx.Request) -> bool:
    """Requests the lean transports send (the rest goes to the fallback)."""
    return (
        request.url.scheme == "http"
        and isinstance(request.stream, httpx.ByteStream)
        and request.headers.get("accept") != "text/event-stream"
    )


def _encode(request: httpx.Request) -> bytes:
    """The request's head and body, as they go on the wire."""
    url = request.url
    body = request.content
    head = [request.method.encode(), b" ", url.raw_path, b" HTTP/1.1\r\n"]
    has_host = has_length = False
    for name, value in request.headers.raw:
        lower = name.lower()
        if lower == b"host":
            has_host = True
        elif lower == b"content-length":
            has_length = True
        head += [name, b": ", value, b"\r\n"]
    if not has_host:
        head[4:4] = [b"Host: ", url.netloc, b"\r\n"]
    if not has_length and (body or request.method in ("POST", "PUT", "PATCH")):
        head.append(b"Content-Length: %d\r\n" % len(body))
    head.append(b"\r\n")
    return b"".join(head) + body


def _response(answer: _Answer) -> httpx.Response:
    return httpx.Response(
        answer.status,
        headers=answer.headers,
        stream=httpx.ByteStream(answer.body),
        extensions={"http_version": b"HTTP/1.1", "reason_phrase": answer.reason},
    )


def _timeouts(request: httpx.Request) -> dict[str, float | None]:
    t = request.extensions.get("timeout") or {}
    return {k: t.get(k) for k in ("connect", "read", "write", "pool")}


class LeanTransport(httpx.AsyncBaseTransport):
    """See the module docstring. ``fallback`` takes what this one does not."""

    def __init__(
        self,
        fallback: httpx.AsyncBaseTransport,
        *,
        max_connections: int = 100,
        max_keepalive: int = 100,
        keepalive_expiry: float = 5.0,
    ) -> None:
        self._fallback = fallback
        self._idle: dict[tuple[str, int], list[_Conn]] = {}
        self._slots = asyncio.Semaphore(max_connections) if max_connections else None
        self._max_keepalive = max_keepalive
        self._keepalive_expiry = keepalive_expiry

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if not takes(request):
            return await self._fallback.handle_async_request(request)
        t = _timeouts(request)
        slots = self._slots
        if slots is not None:
            try:
                async with asyncio.timeout(t["pool"]):
                    await slots.acquire()
            except TimeoutError as exc:
                raise httpx.PoolTimeout("no connection free in time", request=request) from exc
        try:
            return await self._request(request, t)
        finally:
            if slots is not None:
                slots.release()

    async def send(self, request: httpx.Request, timeout: httpx.Timeout) -> httpx.Response:
        """``client.send(request)`` for a request this transport ``takes``, without the
        client's layers that do nothing for the SDK's own requests: no auth flow (the
        bearer token is a header), no redirects (not followed), no cookie jar (its requests
        never carry the client's cookies). ``timeout``: the client's, when the request
        names none."""
        if "timeout" not in request.extensions:
            request.extensions["timeout"] = timeout.as_dict()
        start = time.perf_counter()
        response = await self.handle_async_request(request)
        _finish_direct(request, response, start)
        return response

    async def _connection(
        self, key: tuple[str, int], request: httpx.Request, timeout: float | None
    ) -> _Conn:
        idle = self._idle.get(key)
        now = time.monotonic()
        while idle:
            conn = idle.pop()
            if not conn.closed and now - conn.idle_since < self._keepalive_expiry:
                return conn
            conn.close()
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout):
                _, conn = await loop.create_connection(_Conn, key[0], key[1])
        except TimeoutError as exc:
            raise httpx.ConnectTimeout(f"connecting to {key[0]}:{key[1]} timed out",
                                       request=request) from exc  # fmt: skip
        except OSError as exc:
            raise httpx.ConnectError(str(exc), request=request) from exc
        return conn

    async def _request(self, request: httpx.Request, t: dict[str, float | None]) -> httpx.Response:
        url = request.url
        key = (url.host, url.port or 80)
        data = _encode(request)
        conn = await self._connection(key, request, t["connect"])
        try:
            async with asyncio.timeout(t["read"]):
                answer = await conn.send(data, request.method == "HEAD")
        except TimeoutError as exc:
            conn.close()
            raise httpx.ReadTimeout("timed out waiting for the answer", request=request) from exc
        except httpx.TransportError:
            conn.close()
            raise
        except BaseException:
            conn.close()  # cancelled: the answer would arrive for nobody
            raise
        if not conn.closed:
            idle = self._idle.setdefault(key, [])
            if len(idle) < self._max_keepalive:
                conn.idle_since = time.monotonic()
                idle.append(conn)
            else:
                conn.close()
        return _response(answer)

    async def aclose(self) -> None:
        idle, self._idle = self._idle, {}
        for conns in idle.values():
            for conn in conns:
                conn.close()
        await self._fallback.aclose()


class LeanSyncTransport(httpx.BaseTransport):
    """:class:`LeanTransport` for the blocking :class:`~gpufleet.Client`: blocking sockets,
    a pool shared by threads (each connection serves one request at a time); a connection
    found readable while idle (the server closed it) is not reused."""

    def __init__(
        self,
        fallback: httpx.BaseTransport,
        *,
        max_keepalive: int = 100,
        keepalive_expiry: float = 5.0,
    ) -> None:
        self._fallback = fallback
        self._idle: dict[tuple[str, int], list[_SyncConn]] = {}
        self._lock = threading.Lock()
        self._max_keepalive = max_keepalive
        self._keepalive_expiry = keepalive_expiry

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if not takes(request):
            return self._fallback.handle_request(request)
        t = _timeouts(request)
        url = request.url
        key = (url.host, url.port or 80)
        data = _encode(request)
        conn = self._connection(key, request, t["connect"])
        try:
            answer = conn.exchange(request, data, t)
        except BaseException:
            conn.close()  # failed, timed out or interrupted: its answer is nobody's
            raise
        if answer.keep_alive:
            with self._lock:
                idle = self._idle.setdefault(key, [])
                if len(idle) < self._max_keepalive:
                    conn.idle_since = time.monotonic()
                    idle.append(conn)
                    conn = None  # type: ignore[assignment]
            if conn is not None:
                conn.close()
        else:
            conn.close()
        return _response(answer)

    def send(self, request: httpx.Request, timeout: httpx.Timeout) -> httpx.Response:
        """:meth:`LeanTransport.send` for the blocking client."""
        if "timeout" not in request.extensions:
            request.extensions["timeout"] = timeout.as_dict()
        start = time.perf_counter()
        response = self.handle_request(request)
        _finish_direct(request, response, start)
        return response

    def _connection(
        self, key: tuple[str, int], request: httpx.Request, timeout: float | None
    ) -> _SyncConn:
        now = time.monotonic()
        while True:
            with self._lock:
                idle = self._idle.get(key)
                conn = idle.pop() if idle else None
            if conn is None:
                break
            if now - conn.idle_since < self._keepalive_expiry and not conn.stale():
                return conn
            conn.close()
        try:
            sock = socket.create_connection(key, timeout=timeout)
        except TimeoutError as exc:
            raise httpx.ConnectTimeout(f"connecting to {key[0]}:{key[1]} timed out",
                                       request=request) from exc  # fmt: skip
        except OSError as exc:
            raise httpx.ConnectError(str(exc), request=request) from exc
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return _SyncConn(sock)

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, {}
        for conns in idle.values():
            for conn in conns:
                conn.close()
        self._fallback.close()
