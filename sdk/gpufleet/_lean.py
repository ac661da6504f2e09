"""A lean HTTP/1.1 transport for :class:`~gpufleet.AsyncClient`'s API calls over plain
``http://`` (what a loopback or in-cluster control plane is reached by).

httpx's default transport (httpcore, anyio, h11) spends about a millisecond and a half of
CPU per call on connection-pool bookkeeping, cancel scopes and a pure-Python state machine;
at one call at a time that CPU is the caller's latency. This transport keeps a pool of
keep-alive connections (asyncio protocols), writes each request in one ``write`` and parses
the answer itself: status line, headers, a ``Content-Length`` or chunked body.

What it does not take, it hands to the default transport (``fallback``), so behaviour
stays httpx's: ``https://`` URLs (TLS), request bodies that are streams (file uploads),
and event-stream answers (``Accept: text/event-stream``). The client uses it only when
httpx itself would use its default transport: no ``transport`` given, no proxy in the
environment (see :func:`usable`).

Errors are httpx's: ``ConnectError`` / ``ConnectTimeout`` (the request was not sent),
``PoolTimeout``, ``WriteError``, ``ReadTimeout``, ``RemoteProtocolError`` (the server
closed the connection or answered something that is not HTTP/1.1). A connection is reused
only after a complete answer that keeps it alive, and not after ``keepalive_expiry``
seconds idle (httpx's 5 s default); any error, timeout or cancellation closes it.
"""

from __future__ import annotations

import asyncio
import time
import urllib.request

import httpx

__all__ = ["LeanTransport", "usable"]

_CRLF2 = b"\r\n\r\n"
MAX_HEAD_BYTES = 64 * 1024


def usable(base_url: str) -> bool:
    """Whether API calls to ``base_url`` may go through :class:`LeanTransport`: plain HTTP
    and no proxy settings in the environment (httpx would route through the proxy)."""
    return base_url.startswith("http://") and not urllib.request.getproxies()


class _Answer:
    __slots__ = ("body", "headers", "reason", "status")

    def __init__(
        self, status: int, reason: bytes, headers: list[tuple[bytes, bytes]], body: bytes
    ) -> None:
        self.status = status
        self.reason = reason
        self.headers = headers
        self.body = body


class _Conn(asyncio.Protocol):
    """One keep-alive connection: one request at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.idle_since = 0.0
        self._buf = bytearray()
        self._waiter: asyncio.Future[_Answer] | None = None
        self._head: tuple[int, bytes, list[tuple[bytes, bytes]]] | None = None
        self._length: int | None = None  # body bytes expected (Content-Length)
        self._chunked = False
        self._until_close = False
        self._no_body = False
        self._keep_alive = True
        self._chunks: list[bytes] = []

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self._waiter is None:  # nothing asked: a server talking out of turn
            self.close()
            return
        self._buf += data
        try:
            self._parse()
        except ValueError as exc:
            self._fail(httpx.RemoteProtocolError(f"malformed HTTP answer: {exc}"))
            self.close()

    def eof_received(self) -> bool | None:
        if self._until_close and self._head is not None:
            self._finish(bytes(self._buf))
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._until_close and self._head is not None and self._waiter is not None:
            self._finish(bytes(self._buf))
            return
        what = "without sending a response" if self._head is None else "mid-response"
        self._fail(httpx.RemoteProtocolError(f"Server disconnected {what}: {exc or 'EOF'}"))

    # parsing
    def _parse(self) -> None:
        if self._head is None:
            end = self._buf.find(_CRLF2)
            if end < 0:
                if len(self._buf) > MAX_HEAD_BYTES:
                    raise ValueError("header section too large")
                return
            lines = bytes(self._buf[:end]).split(b"\r\n")
            del self._buf[: end + 4]
            version, _, rest = lines[0].partition(b" ")
            code, _, reason = rest.partition(b" ")
            if not version.startswith(b"HTTP/1.") or len(code) != 3:
                raise ValueError(f"status line {lines[0][:100]!r}")
            status = int(code)
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
            if 100 <= status < 200:  # an interim answer (never asked for): skip it
                self._parse()
                return
            self._head = (status, reason, headers)
            self._keep_alive = keep_alive
            self._chunked = chunked
            self._length = None if chunked else length
            self._no_body = self._no_body or status in (204, 304)
            self._until_close = not self._no_body and not chunked and length is None
            if self._until_close:
                self._keep_alive = False
        if self._no_body:
            self._finish(b"")
        elif self._chunked:
            self._parse_chunks()
        elif self._length is not None and len(self._buf) >= self._length:
            body = bytes(self._buf[: self._length])
            del self._buf[: self._length]
            self._finish(body)

    def _parse_chunks(self) -> None:
        buf = self._buf
        while True:
            end = buf.find(b"\r\n")
            if end < 0:
                return
            size = int(bytes(buf[:end]).partition(b";")[0].strip(), 16)
            if size == 0:  # the last chunk, then trailer lines up to an empty one
                if len(buf) < end + 4:
                    return
                if buf[end + 2 : end + 4] == b"\r\n":
                    del buf[: end + 4]
                else:
                    tail = buf.find(_CRLF2, end + 2)
                    if tail < 0:
                        return
                    del buf[: tail + 4]
                self._finish(b"".join(self._chunks))
                return
            if len(buf) < end + 2 + size + 2:
                return
            self._chunks.append(bytes(buf[end + 2 : end + 2 + size]))
            del buf[: end + 2 + size + 2]

    def _finish(self, body: bytes) -> None:
        assert self._head is not None
        status, reason, headers = self._head
        answer = _Answer(status, reason, headers, body)
        self._head, self._chunks, self._length = None, [], None
        self._chunked = self._until_close = self._no_body = False
        if not self._keep_alive or self._buf:
            self.close()
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(answer)

    # ours
    def send(self, data: bytes, head_only: bool) -> asyncio.Future[_Answer]:
        assert self.transport is not None and self._waiter is None
        self._no_body = head_only
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

    def _takes(self, request: httpx.Request) -> bool:
        return (
            request.url.scheme == "http"
            and isinstance(request.stream, httpx.ByteStream)
            and request.headers.get("accept") != "text/event-stream"
        )

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if not self._takes(request):
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
        host = url.host
        port = url.port or 80
        body = request.content
        target = url.raw_path
        head = [request.method.encode(), b" ", target, b" HTTP/1.1\r\n"]
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
        data = b"".join(head) + body
        conn = await self._connection((host, port), request, t["connect"])
        try:
            async with asyncio.timeout(t["read"]):
                answer = await conn.send(data, request.method == "HEAD")
        except TimeoutError as exc:
            conn.close()
            raise httpx.ReadTimeout("timed out waiting for the answer", request=request) from exc
        except httpx.TransportError:
            conn.close()
            raise
        except OSError as exc:
            conn.close()
            raise httpx.WriteError(str(exc), request=request) from exc
        except BaseException:
            conn.close()  # cancelled: the answer would arrive for nobody
            raise
        if not conn.closed:
            idle = self._idle.setdefault((host, port), [])
            if len(idle) < self._max_keepalive:
                conn.idle_since = time.monotonic()
                idle.append(conn)
            else:
                conn.close()
        return httpx.Response(
            answer.status,
            headers=answer.headers,
            stream=httpx.ByteStream(answer.body),
            extensions={"http_version": b"HTTP/1.1", "reason_phrase": answer.reason},
        )

    async def aclose(self) -> None:
        idle, self._idle = self._idle, {}
        for conns in idle.values():
            for conn in conns:
                conn.close()
        await self._fallback.aclose()
