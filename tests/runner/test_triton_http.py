"""runner/triton_http.py against a real HTTP server on a loopback socket (asyncio streams):
keep-alive reuse, a server that closes, a stale idle connection, a call cancelled in flight,
a refused connection, and the passthrough engine method on top of it."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from runner.backends.base import InferError
from runner.triton_client import TritonClient
from runner.triton_http import TritonHttp

DEADLINE_S = 5.0


class Server:
    """A minimal HTTP/1.1 server: each request is answered by ``reply(path, headers, body)``
    → (status, headers, body, close_after). Counts connections and requests."""

    def __init__(self, reply: Callable[[str, dict[str, str], bytes], Any]) -> None:
        self.reply = reply
        self.connections = 0
        self.requests: list[tuple[str, dict[str, str], bytes]] = []
        self.writers: list[asyncio.StreamWriter] = []
        self.port = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.writers.append(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                path = lines[0].split(" ")[1]
                headers = {}
                for line in lines[1:]:
                    if ":" in line:
                        k, _, v = line.partition(":")
                        headers[k.strip().lower()] = v.strip()
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                self.requests.append((path, headers, body))
                result = self.reply(path, headers, body)
                if asyncio.iscoroutine(result):
                    result = await result
                status, extra, payload, close = result
                out = [f"HTTP/1.1 {status} X", f"Content-Length: {len(payload)}"]
                out += [f"{k}: {v}" for k, v in extra.items()]
                if close:
                    out.append("Connection: close")
                writer.write(("\r\n".join(out) + "\r\n\r\n").encode() + payload)
                await writer.drain()
                if close:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@contextlib.asynccontextmanager
async def serving(reply: Callable[..., Any]) -> AsyncIterator[Server]:
    server = Server(reply)
    srv = await asyncio.start_server(server.handle, "127.0.0.1", 0)
    server.port = srv.sockets[0].getsockname()[1]
    try:
        yield server
    finally:
        for w in server.writers:
            w.close()
        srv.close()
        await srv.wait_closed()


def echo(path: str, headers: dict[str, str], body: bytes) -> Any:
    return 200, {"Content-Type": "application/json", "X-Path": path}, body, False


async def test_keep_alive_reuses_one_connection_and_passes_bytes() -> None:
    async with serving(echo) as server:
        client = TritonHttp("127.0.0.1", server.port)
        for i in range(3):
            body = b'{"n":%d}' % i
            answer = await asyncio.wait_for(
                client.post("/v2/models/m/versions/1/infer", body, {"Content-Type": "a/b"}),
                DEADLINE_S,
            )
            assert answer.status == 200
            assert answer.body == body
            assert answer.header("content-type") == "application/json"
            assert answer.header("x-path") is None  # only the forwarded headers are kept
        assert server.connections == 1
        path, headers, _ = server.requests[0]
        assert path == "/v2/models/m/versions/1/infer"
        assert headers["content-type"] == "a/b"
        assert "accept-encoding" not in headers  # Triton must not compress for us
        client.close()


async def test_concurrent_calls_use_separate_connections() -> None:
    gate = asyncio.Event()

    async def slow(path: str, headers: dict[str, str], body: bytes) -> Any:
        await gate.wait()
        return 200, {}, body, False

    async with serving(slow) as server:
        client = TritonHttp("127.0.0.1", server.port)
        calls = [asyncio.create_task(client.post("/p", b"%d" % i, {})) for i in range(4)]
        while len(server.requests) < 4:
            await asyncio.sleep(0.01)
        gate.set()
        answers = await asyncio.wait_for(asyncio.gather(*calls), DEADLINE_S)
        assert sorted(a.body for a in answers) == [b"0", b"1", b"2", b"3"]
        assert server.connections == 4
        client.close()


async def test_connection_close_answer_is_not_reused() -> None:
    def closing(path: str, headers: dict[str, str], body: bytes) -> Any:
        return 200, {}, b"ok", True

    async with serving(closing) as server:
        client = TritonHttp("127.0.0.1", server.port)
        for _ in range(2):
            answer = await asyncio.wait_for(client.post("/p", b"", {}), DEADLINE_S)
            assert answer.body == b"ok"
        assert server.connections == 2
        client.close()


async def test_idle_connection_closed_by_the_server_is_replaced() -> None:
    async with serving(echo) as server:
        client = TritonHttp("127.0.0.1", server.port)
        assert (await asyncio.wait_for(client.post("/p", b"1", {}), DEADLINE_S)).body == b"1"
        for w in server.writers:  # the server ends the idle keep-alive connection
            w.close()
        answer = await asyncio.wait_for(client.post("/p", b"2", {}), DEADLINE_S)
        assert answer.body == b"2"
        assert server.connections == 2
        assert [r[2] for r in server.requests] == [b"1", b"2"]  # the request ran once
        client.close()


async def test_cancelled_call_closes_its_connection() -> None:
    async def never(path: str, headers: dict[str, str], body: bytes) -> Any:
        await asyncio.sleep(3600)

    answered = 0

    async def first_hangs(path: str, headers: dict[str, str], body: bytes) -> Any:
        nonlocal answered
        if body == b"hang":
            return await never(path, headers, body)
        answered += 1
        return 200, {}, body, False

    async with serving(first_hangs) as server:
        client = TritonHttp("127.0.0.1", server.port)
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(client.post("/p", b"hang", {}), 0.2)
        # The late answer of the first call can never be read as the second one's.
        answer = await asyncio.wait_for(client.post("/p", b"next", {}), DEADLINE_S)
        assert answer.body == b"next"
        assert server.connections == 2
        client.close()


async def test_a_call_past_its_timeout_fails_and_its_connection_is_dropped() -> None:
    gate = asyncio.Event()

    async def held(path: str, headers: dict[str, str], body: bytes) -> Any:
        if body == b"slow":
            await gate.wait()
        return 200, {"Content-Type": "application/json"}, body, False

    async with serving(held) as server:
        client = TritonHttp("127.0.0.1", server.port)
        lines = b"Content-Type: application/json\r\n"  # header lines given as bytes
        started = asyncio.get_running_loop().time()
        with pytest.raises(TimeoutError):
            await client.post("/p", b"slow", lines, timeout_s=0.2)  # its own timer, no wrapper
        assert asyncio.get_running_loop().time() - started < DEADLINE_S
        gate.set()  # the late answer goes to a closed connection, never to the next call
        answer = await client.post("/p", b"next", lines, timeout_s=DEADLINE_S)
        assert answer.body == b"next"
        assert server.connections == 2
        assert server.requests[-1][1]["content-type"] == "application/json"
        # a timely answer cancels its timer: the kept connection is not closed later
        again = await client.post("/p", b"again", lines, timeout_s=0.25)
        await asyncio.sleep(0.4)
        last = await client.post("/p", b"last", lines, timeout_s=DEADLINE_S)
        assert (again.body, last.body) == (b"again", b"last")
        assert server.connections == 2
        client.close()

    # the engine's passthrough maps the timeout to a transient InferError
    async with serving(held) as server:
        gate.clear()
        engine = TritonClient(
            protocol="grpc", http_port=server.port, grpc_port=1, metrics_port=1, repository_key="k"
        )
        try:
            with pytest.raises(InferError, match="timed out") as late:
                await engine.infer_raw("http", "m", "1", b"slow", {}, 0.2)
            assert late.value.transient
        finally:
            gate.set()
            await engine.aclose()


async def test_refused_connection_raises_connection_error() -> None:
    srv = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    srv.close()
    await srv.wait_closed()
    client = TritonHttp("127.0.0.1", port)
    with pytest.raises(ConnectionError):
        await asyncio.wait_for(client.post("/p", b"", {}), DEADLINE_S)


async def test_engine_passthrough_forwards_bytes_and_maps_refusals() -> None:
    def triton(path: str, headers: dict[str, str], body: bytes) -> Any:
        if b"bad" in body:
            return 400, {"Content-Type": "application/json"}, b'{"error":"input bad"}', False
        if "missing" in path:
            return 400, {}, b'{"error":"Request for unknown model: missing"}', False
        extra = {"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": "7"}
        return 200, extra, b'{"a":1}' + b"\x00\x01", False

    async with serving(triton) as server:
        engine = TritonClient(
            protocol="grpc",
            http_port=server.port,
            grpc_port=1,
            metrics_port=1,
            repository_key="k",
        )
        try:
            meta = {"header_length": 5, "content_type": "application/octet-stream"}
            body, out = await engine.infer_raw("http", "m", "1", b"head!\x00", meta, DEADLINE_S)
            assert body == b'{"a":1}\x00\x01'
            assert out == {"header_length": 7, "content_type": "application/octet-stream"}
            path, headers, sent = server.requests[-1]
            assert path == "/v2/models/m/versions/1/infer"
            assert headers["inference-header-content-length"] == "5"
            assert sent == b"head!\x00"
            with pytest.raises(InferError) as refused:
                await engine.infer_raw("http", "m", "1", b"bad", {}, DEADLINE_S)
            assert refused.value.code == "invalid_input" and not refused.value.transient
            with pytest.raises(InferError) as missing:
                await engine.infer_raw("http", "missing", "1", b"{}", {}, DEADLINE_S)
            assert missing.value.transient
        finally:
            await engine.aclose()
