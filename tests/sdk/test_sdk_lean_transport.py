"""gpufleet/_lean.py (AsyncClient's transport for plain-HTTP API calls) against real HTTP
servers on loopback sockets: a scripted asyncio server for the edge cases (keep-alive reuse,
chunked bodies, a server that closes, one that says nothing, a refused connection), and
uvicorn serving a small app for what httpx's default transport answers the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx
import pytest
import uvicorn
from gpufleet import AsyncClient, Client, errors
from gpufleet._lean import LeanSyncTransport, LeanTransport, usable

DEADLINE_S = 5.0


class Scripted:
    """Answers each request with ``reply(method, path, headers, body)`` -> raw bytes to
    write (a list: pieces written apart; None: nothing) and whether to close afterwards.
    Counts connections."""

    def __init__(self, reply: Callable[[str, str, dict[str, str], bytes], Any]) -> None:
        self.reply = reply
        self.connections = 0
        self.requests: list[tuple[str, str, dict[str, str], bytes]] = []
        self.writers: list[asyncio.StreamWriter] = []
        self.port = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.writers.append(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method, path = lines[0].split(" ")[:2]
                headers = {}
                for line in lines[1:]:
                    if ":" in line:
                        k, _, v = line.partition(":")
                        headers[k.strip().lower()] = v.strip()
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                self.requests.append((method, path, headers, body))
                raw, close = self.reply(method, path, headers, body)
                for piece in [raw] if isinstance(raw, bytes) else raw or []:
                    writer.write(piece)  # a list: written apart, a moment between them
                    await writer.drain()
                    if not isinstance(raw, bytes):
                        await asyncio.sleep(0.002)
                if close:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@contextlib.asynccontextmanager
async def scripted(reply: Callable[..., Any]) -> AsyncIterator[Scripted]:
    server = Scripted(reply)
    srv = await asyncio.start_server(server.handle, "127.0.0.1", 0)
    server.port = srv.sockets[0].getsockname()[1]
    try:
        yield server
    finally:
        for w in server.writers:
            w.close()
        srv.close()
        await srv.wait_closed()


def ok(body: bytes, extra: str = "", status: str = "200 OK") -> bytes:
    return f"HTTP/1.1 {status}\r\nContent-Length: {len(body)}\r\n{extra}\r\n".encode() + body


def lean() -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=LeanTransport(httpx.AsyncHTTPTransport()), timeout=2.0)


async def test_keep_alive_reuses_one_connection_and_sends_the_request_intact() -> None:
    def reply(method: str, path: str, headers: dict[str, str], body: bytes) -> Any:
        doc = {"method": method, "path": path, "body": body.decode(), "key": headers.get("x-k")}
        return ok(json.dumps(doc).encode(), "Content-Type: application/json\r\n"), False

    async with scripted(reply) as server, lean() as http:
        url = f"http://127.0.0.1:{server.port}"
        for i in range(3):
            resp = await http.post(f"{url}/v1/jobs?x={i}&y=a%20b", json={"i": i},
                                   headers={"X-K": "v"})  # fmt: skip
            assert resp.status_code == 200
            doc = resp.json()
            assert (doc["method"], doc["path"], doc["key"]) == (
                "POST",
                f"/v1/jobs?x={i}&y=a%20b",
                "v",
            )
            assert json.loads(doc["body"]) == {"i": i}
        got = await http.get(f"{url}/v1/jobs/a")
        assert got.json()["method"] == "GET" and got.json()["body"] == ""
        assert server.connections == 1
        host = server.requests[0][2]["host"]
        assert host == f"127.0.0.1:{server.port}"


async def test_chunked_body_status_reason_headers_and_gzip() -> None:
    packed = gzip.compress(b'{"a": 1}')

    def reply(method: str, path: str, headers: dict[str, str], body: bytes) -> Any:
        if path == "/gz":
            return ok(packed, "Content-Encoding: gzip\r\n"), False
        if path == "/empty":
            return b"HTTP/1.1 204 No Content\r\nX-A: 1\r\n\r\n", False
        chunks = b"4\r\nabcd\r\n3;ext=1\r\nefg\r\n0\r\nTrailer: x\r\n\r\n"
        head = b"HTTP/1.1 418 I'm a teapot\r\nTransfer-Encoding: chunked\r\nX-Multi: 1\r\n"
        return head + b"X-Multi: 2\r\n\r\n" + chunks, False

    async with scripted(reply) as server, lean() as http:
        url = f"http://127.0.0.1:{server.port}"
        resp = await http.get(f"{url}/chunked")
        assert (resp.status_code, resp.reason_phrase, resp.content) == (
            418,
            "I'm a teapot",
            b"abcdefg",
        )
        assert resp.headers.get_list("x-multi") == ["1", "2"]
        assert (await http.get(f"{url}/gz")).json() == {"a": 1}
        empty = await http.delete(f"{url}/empty")
        assert (empty.status_code, empty.content, empty.headers["x-a"]) == (204, b"", "1")
        assert server.connections == 1


async def test_answer_split_across_many_writes() -> None:
    body = json.dumps({"data": list(range(3000))}).encode()
    raw = ok(body)
    chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    for i in range(0, len(body), 5000):
        part = body[i : i + 5000]
        chunked += b"%x\r\n" % len(part) + part + b"\r\n"
    chunked += b"0\r\n\r\n"

    def reply(method: str, path: str, headers: dict[str, str], b: bytes) -> Any:
        whole = chunked if path == "/chunked" else raw
        return [whole[i : i + 3] for i in range(0, 60, 3)] + [whole[60:]], False

    async with scripted(reply) as server, lean() as http:
        for path in ("/big", "/chunked"):
            resp = await http.get(f"http://127.0.0.1:{server.port}{path}")
            assert resp.json() == {"data": list(range(3000))}
        assert server.connections == 1


async def test_connection_close_is_honoured_and_body_until_close() -> None:
    def reply(method: str, path: str, headers: dict[str, str], body: bytes) -> Any:
        if path == "/eof":  # no length: the body ends with the connection
            return b"HTTP/1.1 200 OK\r\n\r\nuntil-close", True
        return ok(b"x", "Connection: close\r\n"), True

    async with scripted(reply) as server, lean() as http:
        url = f"http://127.0.0.1:{server.port}"
        assert (await http.get(f"{url}/a")).content == b"x"
        assert (await http.get(f"{url}/eof")).content == b"until-close"
        assert (await http.get(f"{url}/b")).content == b"x"
        assert server.connections == 3


async def test_server_closing_without_an_answer_is_a_remote_protocol_error() -> None:
    def reply(method: str, path: str, headers: dict[str, str], body: bytes) -> Any:
        return None, True

    async with scripted(reply) as server, lean() as http:
        with pytest.raises(httpx.RemoteProtocolError, match="without sending a response"):
            await http.get(f"http://127.0.0.1:{server.port}/")


async def test_garbage_answer_and_read_timeout() -> None:
    def reply(method: str, path: str, headers: dict[str, str], body: bytes) -> Any:
        if path == "/garbage":
            return b"SSH-2.0-OpenSSH\r\n\r\n", False
        return None, False  # never answers

    async with scripted(reply) as server, lean() as http:
        url = f"http://127.0.0.1:{server.port}"
        with pytest.raises(httpx.RemoteProtocolError, match="malformed"):
            await http.get(f"{url}/garbage")
        started = time.monotonic()
        with pytest.raises(httpx.ReadTimeout):
            await http.get(f"{url}/silent", timeout=0.3)
        assert time.monotonic() - started < DEADLINE_S


async def test_refused_connection_is_connect_error() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    async with lean() as http:
        with pytest.raises(httpx.ConnectError):
            await http.get(f"http://127.0.0.1:{port}/")


async def test_stale_idle_connection_is_not_reused() -> None:
    def reply(method: str, path: str, headers: dict[str, str], body: bytes) -> Any:
        return ok(b"x"), False

    async with scripted(reply) as server, lean() as http:
        url = f"http://127.0.0.1:{server.port}"
        await http.get(f"{url}/")
        for w in server.writers:  # the server ends its idle keep-alive connections
            w.close()
        await asyncio.sleep(0.1)
        assert (await http.get(f"{url}/")).content == b"x"
        assert server.connections == 2


async def test_cancelled_call_closes_its_connection() -> None:
    def reply(method: str, path: str, headers: dict[str, str], body: bytes) -> Any:
        return (None, False) if path == "/slow" else (ok(b"fast"), False)

    async with scripted(reply) as server, lean() as http:
        url = f"http://127.0.0.1:{server.port}"
        task = asyncio.create_task(http.get(f"{url}/slow"))
        await asyncio.sleep(0.1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert (await http.get(f"{url}/")).content == b"fast"
        assert server.connections == 2


async def test_streams_https_and_event_streams_go_to_the_fallback() -> None:
    seen: list[str] = []

    class Recorder(httpx.AsyncBaseTransport):
        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            seen.append(str(request.url))
            return httpx.Response(200, content=b"fallback")

    async def body() -> AsyncIterator[bytes]:
        yield b"streamed"

    http = httpx.AsyncClient(transport=LeanTransport(Recorder()))
    async with http:
        assert (await http.get("https://example.invalid/a")).content == b"fallback"
        assert (await http.post("http://127.0.0.1:9/up", content=body())).content == b"fallback"
        sse = await http.get("http://127.0.0.1:9/s", headers={"Accept": "text/event-stream"})
        assert sse.content == b"fallback"
    assert len(seen) == 3


def test_usable_only_for_plain_http_without_proxies(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("ALL_PROXY", raising=False)
    assert usable("http://127.0.0.1:8080")
    assert not usable("https://fleet.example")
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:3128")
    assert not usable("http://127.0.0.1:8080")


# ---------------------------------------------------------------------- the SDK on top of it


async def _app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """A tiny control plane: token exchange, a job submit that answers 503 once per key
    (the SDK retries it), and a 404 with the API's error body."""
    if scope["type"] != "http":
        return
    body = b""
    while True:
        msg = await receive()
        body += msg.get("body", b"")
        if not msg.get("more_body"):
            break
    path = scope["path"]
    headers = {k.decode(): v.decode() for k, v in scope["headers"]}
    doc: dict[str, Any] = {"error": {"code": "not_found", "message": f"no {path}"}}
    status = 404
    if path == "/v1/auth/token":
        status, doc = 200, {"access_token": "tok", "refresh_token": "ref", "expires_in": 900,
                            "token_type": "Bearer"}  # fmt: skip
    elif path == "/v1/jobs" and scope["method"] == "POST":
        key = headers.get("idempotency-key", "")
        _APP_SEEN.append(key)
        if _APP_SEEN.count(key) == 1:
            status, doc = 503, {"error": {"code": "unavailable", "message": "busy"}}
        else:
            assert json.loads(body)["model"] == "add_sub"
            status = 202
            doc = {"id": "job_1", "status": "QUEUED", "created_at": "2026-01-01T00:00:00Z"}
    raw = json.dumps(doc).encode()
    out = [(b"content-type", b"application/json"), (b"retry-after", b"0")]
    await send({"type": "http.response.start", "status": status, "headers": out})
    await send({"type": "http.response.body", "body": raw})


_APP_SEEN: list[str] = []


@pytest.fixture
def uvicorn_url() -> Iterator[str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = uvicorn.Config(_app, host="127.0.0.1", port=port, log_level="error", lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + DEADLINE_S
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(DEADLINE_S)


async def test_async_client_uses_it_and_keeps_retries_and_errors(uvicorn_url: str) -> None:
    _APP_SEEN.clear()
    async with AsyncClient(uvicorn_url, api_key="gf_test_key_0123", max_retries=2) as fleet:
        assert isinstance(fleet._http._transport, LeanTransport)
        job = await fleet.submit("add_sub", {"X": [1.0, 2.0]}, idempotency_key="k-1")
        assert (job.id, job.status) == ("job_1", "QUEUED")
        assert _APP_SEEN == ["k-1", "k-1"]  # the 503 was retried with the same key
        with pytest.raises(errors.NotFoundError, match="no /v1/jobs/nope"):
            await fleet.get("nope")
    custom = httpx.MockTransport(lambda r: httpx.Response(200))
    async with AsyncClient(uvicorn_url, api_key="gf_test_key_0123", transport=custom) as fleet:
        assert fleet._http._transport is custom  # a transport given is used as it is


# ---------------------------------------------------------------------- the blocking transport


@contextlib.contextmanager
def threaded(reply: Callable[..., Any]) -> Iterator[Scripted]:
    """:func:`scripted` served from a thread (for the blocking client)."""
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    holder: list[Any] = []

    async def serve() -> None:
        async with scripted(reply) as server:
            holder.append(server)
            stop = asyncio.Event()
            holder.append(stop)
            ready.set()
            await stop.wait()

    thread = threading.Thread(target=loop.run_until_complete, args=(serve(),), daemon=True)
    thread.start()
    assert ready.wait(DEADLINE_S)
    try:
        yield holder[0]
    finally:
        loop.call_soon_threadsafe(holder[1].set)
        thread.join(DEADLINE_S)
        loop.close()


def lean_sync() -> httpx.Client:
    return httpx.Client(transport=LeanSyncTransport(httpx.HTTPTransport()), timeout=2.0)


def test_sync_keep_alive_pieces_chunked_and_close() -> None:
    body = json.dumps({"data": list(range(2000))}).encode()
    chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    chunked += b"%x\r\n" % len(body) + body + b"\r\n0\r\n\r\n"

    def reply(method: str, path: str, headers: dict[str, str], b: bytes) -> Any:
        if path == "/echo":
            return ok(
                json.dumps({"m": method, "body": b.decode(), "k": headers.get("x-k")}).encode()
            ), False
        if path == "/eof":
            return b"HTTP/1.1 200 OK\r\n\r\nuntil-close", True
        whole = chunked if path == "/chunked" else ok(body)
        return [whole[i : i + 5] for i in range(0, 50, 5)] + [whole[50:]], False

    with threaded(reply) as server, lean_sync() as http:
        url = f"http://127.0.0.1:{server.port}"
        for i in range(3):
            doc = http.post(f"{url}/echo", json={"i": i}, headers={"X-K": "v"}).json()
            assert (doc["m"], json.loads(doc["body"]), doc["k"]) == ("POST", {"i": i}, "v")
        assert http.get(f"{url}/big").json() == {"data": list(range(2000))}
        assert http.get(f"{url}/chunked").json() == {"data": list(range(2000))}
        assert server.connections == 1
        assert http.get(f"{url}/eof").content == b"until-close"
        assert http.get(f"{url}/big").status_code == 200
        assert server.connections == 2


def test_sync_errors_are_httpx_errors() -> None:
    def reply(method: str, path: str, headers: dict[str, str], body: bytes) -> Any:
        if path == "/garbage":
            return b"SSH-2.0-OpenSSH\r\n\r\n", False
        if path == "/close":
            return None, True
        return None, False

    with threaded(reply) as server, lean_sync() as http:
        url = f"http://127.0.0.1:{server.port}"
        with pytest.raises(httpx.RemoteProtocolError, match="malformed"):
            http.get(f"{url}/garbage")
        with pytest.raises(httpx.RemoteProtocolError, match="without sending a response"):
            http.get(f"{url}/close")
        started = time.monotonic()
        with pytest.raises(httpx.ReadTimeout):
            http.get(f"{url}/silent", timeout=0.3)
        assert time.monotonic() - started < DEADLINE_S
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with lean_sync() as http, pytest.raises(httpx.ConnectError):
        http.get(f"http://127.0.0.1:{port}/")


def test_sync_stale_idle_connection_is_not_reused() -> None:
    def reply(method: str, path: str, headers: dict[str, str], body: bytes) -> Any:
        return ok(b"x"), False

    with threaded(reply) as server, lean_sync() as http:
        url = f"http://127.0.0.1:{server.port}"
        http.get(f"{url}/")
        for w in list(server.writers):  # the server ends its idle keep-alive connection
            w.transport.get_extra_info("socket").shutdown(socket.SHUT_RDWR)
        time.sleep(0.1)
        assert http.get(f"{url}/").content == b"x"
        assert server.connections == 2


def test_blocking_client_uses_it_and_keeps_retries_and_errors(uvicorn_url: str) -> None:
    _APP_SEEN.clear()
    with Client(uvicorn_url, api_key="gf_test_key_0123", max_retries=2) as fleet:
        assert isinstance(fleet._http._transport, LeanSyncTransport)
        job = fleet.submit("add_sub", {"X": [1.0, 2.0]}, idempotency_key="k-2")
        assert (job.id, job.status) == ("job_1", "QUEUED")
        assert _APP_SEEN == ["k-2", "k-2"]  # the 503 was retried with the same key
        with pytest.raises(errors.NotFoundError, match="no /v1/jobs/nope"):
            fleet.get("nope")


async def test_direct_send_is_what_the_client_would_answer(
    uvicorn_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The SDK's own requests skip httpx's client layers: same response (request, elapsed,
    decoded body), the same httpx log line, the same error once the client is closed."""
    fleet = AsyncClient(uvicorn_url, api_key="gf_test_key_0123")
    lean_transport = fleet._lean
    assert lean_transport is not None
    request = fleet._core.build("GET", "/v1/nothing-here")
    with caplog.at_level("INFO", logger="httpx"):
        direct = await lean_transport.send(request, fleet._http.timeout)
    via_client = await fleet._http.send(fleet._core.build("GET", "/v1/nothing-here"))
    assert direct.request is request and direct.elapsed.total_seconds() > 0
    assert (direct.status_code, direct.json(), direct.headers["content-type"]) == (
        via_client.status_code, via_client.json(), via_client.headers["content-type"],
    )  # fmt: skip
    assert any(f"GET {uvicorn_url}/v1/nothing-here" in r.getMessage() for r in caplog.records)
    await fleet.close()
    with pytest.raises(RuntimeError, match="client has been closed"):
        await fleet.get("x")
    assert not usable("http://user:pw@127.0.0.1:8080")  # httpx would send basic auth


def test_blocking_direct_send_after_close_raises(uvicorn_url: str) -> None:
    fleet = Client(uvicorn_url, api_key="gf_test_key_0123")
    assert fleet._lean is not None
    fleet.close()
    with pytest.raises(RuntimeError, match="client has been closed"):
        fleet.get("x")
