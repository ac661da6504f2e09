"""runner/triton_grpc.py against a real gRPC server (grpcio's aio server on a loopback port,
a generic bytes-in/bytes-out handler): answers byte for byte, statuses and messages as grpc
gives them, messages larger than the HTTP/2 windows both ways, many calls multiplexed on one
connection, deadlines, a refused connection, a server that goes away; and the passthrough
engine method on top of it."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import pytest

from runner.backends.base import InferError
from runner.triton_client import GRPC_INFER_METHOD, TritonClient
from runner.triton_grpc import (
    TritonGrpc,
    _hpack_int,
    grpc_status_name,
    grpc_timeout,
)

METHOD = "/test.Echo/Call"
Behaviour = Callable[[bytes, grpc.aio.ServicerContext], Awaitable[bytes]]


class Server:
    """A grpc.aio server whose unary methods (any name) run ``self.behaviour``."""

    def __init__(self) -> None:
        self.behaviour: Behaviour = self.echo
        self.seen: list[tuple[str, dict[str, str], float | None]] = []
        self.cancelled = asyncio.Event()
        self.server: grpc.aio.Server | None = None
        self.port = 0

    @staticmethod
    async def echo(body: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return body

    async def start(self, port: int = 0) -> int:
        outer = self

        async def unary(body: bytes, context: grpc.aio.ServicerContext) -> bytes:
            meta = {k: str(v) for k, v in context.invocation_metadata() or ()}
            outer.seen.append((details.method, meta, context.time_remaining()))
            try:
                return await outer.behaviour(body, context)
            except asyncio.CancelledError:
                outer.cancelled.set()
                raise

        details: Any = None

        class Handler(grpc.GenericRpcHandler):  # type: ignore[misc]
            def service(self, handler_call_details: Any) -> Any:
                nonlocal details
                details = handler_call_details
                return grpc.unary_unary_rpc_method_handler(unary)

        self.server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", 2**31 - 1),
                ("grpc.max_send_message_length", 2**31 - 1),
                ("grpc.so_reuseport", 0),
            ]
        )
        self.server.add_generic_rpc_handlers((Handler(),))
        self.port = self.server.add_insecure_port(f"127.0.0.1:{port}")
        await self.server.start()
        return self.port

    async def stop(self, grace: float | None = None) -> None:
        if self.server is not None:
            await self.server.stop(grace)


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    s = Server()
    await s.start()
    yield s
    await s.stop()


@pytest.fixture
async def client(server: Server) -> AsyncIterator[TritonGrpc]:
    c = TritonGrpc("127.0.0.1", server.port)
    yield c
    c.close()


async def test_bytes_in_bytes_out_and_request_headers(server: Server, client: TritonGrpc) -> None:
    for body in (b"hello", b"", bytes(range(256)) * 3):
        answer = await client.unary(METHOD, body, timeout_s=5.0)
        assert (answer.status, answer.message, answer.body) == (0, "", body)
    method, meta, remaining = server.seen[0]
    assert method == METHOD
    assert meta["user-agent"].startswith("gpufleet-runner")
    assert remaining is not None and 3.0 < remaining <= 5.0  # grpc-timeout reached the server


async def test_messages_larger_than_the_windows_both_ways(
    server: Server, client: TritonGrpc
) -> None:
    # 64 KiB is HTTP/2's initial window, 16 KiB its frame size: 3 MiB needs WINDOW_UPDATEs
    # from the server while we send, and many frames back.
    body = bytes(i % 251 for i in range(3 * 2**20 + 7))
    server.behaviour = lambda b, c: _reversed(b)
    answer = await client.unary(METHOD, body, timeout_s=20.0)
    assert answer.status == 0
    assert answer.body == body[::-1]
    # and the connection still serves small calls
    server.behaviour = Server.echo
    assert (await client.unary(METHOD, b"x", timeout_s=5.0)).body == b"x"


async def _reversed(body: bytes) -> bytes:
    return body[::-1]


@pytest.mark.parametrize(
    ("code", "message"),
    [
        (grpc.StatusCode.INVALID_ARGUMENT, "unexpected shape for input 'INPUT0': got [1,5]"),
        (grpc.StatusCode.NOT_FOUND, "Request for unknown model: 'nope' is not found"),
        (grpc.StatusCode.INTERNAL, "100% broken,\nnon-ASCII: é→ü and a trailing space "),
        (grpc.StatusCode.UNAVAILABLE, ""),
    ],
)
async def test_statuses_and_messages_as_grpc_gives_them(
    server: Server, client: TritonGrpc, code: grpc.StatusCode, message: str
) -> None:
    async def refuse(body: bytes, context: grpc.aio.ServicerContext) -> bytes:
        await context.abort(code, message)
        raise AssertionError("unreachable")

    server.behaviour = refuse
    answer = await client.unary(METHOD, b"req", timeout_s=5.0)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.port}")
    try:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await channel.unary_unary(METHOD)(b"req", timeout=5.0)
    finally:
        await channel.close()
    assert grpc_status_name(answer.status) == caught.value.code().name == code.name
    assert answer.message == caught.value.details() == message
    assert answer.body == b""


async def test_concurrent_calls_share_one_connection(server: Server, client: TritonGrpc) -> None:
    async def slow_echo(body: bytes, context: grpc.aio.ServicerContext) -> bytes:
        await asyncio.sleep(0.01 * (body[0] % 5))
        return body * 2

    server.behaviour = slow_echo
    bodies = [bytes([i]) * (1 + i * 700) for i in range(60)]
    answers = await asyncio.gather(*(client.unary(METHOD, b, timeout_s=10.0) for b in bodies))
    assert [a.body for a in answers] == [b * 2 for b in bodies]
    assert client._conn is not None and client._conn._next_id == 2 * 60 + 1


async def test_deadline_resets_the_stream_and_the_connection_goes_on(
    server: Server, client: TritonGrpc
) -> None:
    async def hang(body: bytes, context: grpc.aio.ServicerContext) -> bytes:
        await asyncio.sleep(30)
        return body

    server.behaviour = hang
    loop = asyncio.get_running_loop()
    start = loop.time()
    answer = await client.unary(METHOD, b"slow", timeout_s=0.3)
    assert (answer.status, answer.message) == (4, "Deadline Exceeded")  # as grpc says
    assert loop.time() - start < 2.0
    await asyncio.wait_for(server.cancelled.wait(), 5.0)  # the server's handler was cancelled
    server.behaviour = Server.echo
    assert (await client.unary(METHOD, b"next", timeout_s=5.0)).body == b"next"
    assert client._conn is not None and not client._conn._streams


async def test_a_cancelled_call_resets_its_stream(server: Server, client: TritonGrpc) -> None:
    async def hang(body: bytes, context: grpc.aio.ServicerContext) -> bytes:
        await asyncio.sleep(30)
        return body

    server.behaviour = hang
    task = asyncio.create_task(client.unary(METHOD, b"x", timeout_s=30.0))
    await asyncio.sleep(0.2)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.wait_for(server.cancelled.wait(), 5.0)


async def test_refused_connection_raises_connection_error() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    client = TritonGrpc("127.0.0.1", port)
    with pytest.raises(ConnectionError):
        await client.unary(METHOD, b"x", timeout_s=5.0)


async def test_a_server_that_goes_away_and_comes_back(server: Server) -> None:
    client = TritonGrpc("127.0.0.1", server.port)
    try:
        assert (await client.unary(METHOD, b"a", timeout_s=5.0)).status == 0

        async def hang(body: bytes, context: grpc.aio.ServicerContext) -> bytes:
            await asyncio.sleep(30)
            return body

        server.behaviour = hang
        call = asyncio.create_task(client.unary(METHOD, b"b", timeout_s=10.0))
        await asyncio.sleep(0.2)
        await server.stop(grace=0)
        try:
            answer = await asyncio.wait_for(call, 5.0)
        except ConnectionError:
            pass  # the connection closed under the call
        else:  # or the server reset the stream / said it was going away
            assert answer.status in (1, 14), answer.message
        # a new server on the same port: the next call opens a new connection
        again = Server()
        await again.start(server.port)
        try:
            for _ in range(50):  # the old connection's close may still be on its way
                try:
                    answer = await client.unary(METHOD, b"c", timeout_s=5.0)
                except ConnectionError:
                    await asyncio.sleep(0.05)
                    continue
                if answer.status == 0:
                    break
                await asyncio.sleep(0.05)
            assert (answer.status, answer.body) == (0, b"c")
        finally:
            await again.stop()
    finally:
        client.close()


def test_wire_helpers() -> None:
    assert _hpack_int(10, 5, 0) == b"\x0a"  # RFC 7541 C.1.1
    assert _hpack_int(1337, 5, 0) == b"\x1f\x9a\x0a"  # RFC 7541 C.1.2
    assert grpc_timeout(10.0) == b"10000m"
    assert grpc_timeout(0.0001) == b"1m"
    assert grpc_timeout(10**6) == b"1000000S"
    assert grpc_status_name(4) == "DEADLINE_EXCEEDED"
    assert grpc_status_name(16) == "UNAUTHENTICATED"
    assert grpc_status_name(99) == "UNKNOWN"
    assert [c.name for c in grpc.StatusCode] == [
        grpc_status_name(c.value[0]) for c in grpc.StatusCode
    ]


async def test_engine_passthrough_maps_statuses(server: Server) -> None:
    engine = TritonClient(
        protocol="grpc",
        http_port=1,
        grpc_port=server.port,
        metrics_port=1,
        repository_key="k",
    )
    try:
        answer, meta = await engine.infer_raw("grpc", "m", "1", b"request", {}, 5.0)
        assert (answer, meta) == (b"request", {})
        assert server.seen[-1][0] == GRPC_INFER_METHOD

        async def refuse(body: bytes, context: grpc.aio.ServicerContext) -> bytes:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "bad input 'X'")
            raise AssertionError("unreachable")

        server.behaviour = refuse
        with pytest.raises(InferError) as caught:
            await engine.infer_raw("grpc", "m", "1", b"request", {}, 5.0)
        assert (str(caught.value), caught.value.code, caught.value.transient) == (
            "bad input 'X'",
            "invalid_input",
            False,
        )

        async def missing(body: bytes, context: grpc.aio.ServicerContext) -> bytes:
            await context.abort(grpc.StatusCode.NOT_FOUND, "Request for unknown model")
            raise AssertionError("unreachable")

        server.behaviour = missing
        with pytest.raises(InferError) as caught:
            await engine.infer_raw("grpc", "m", "1", b"request", {}, 5.0)
        assert caught.value.transient

        async def hang(body: bytes, context: grpc.aio.ServicerContext) -> bytes:
            await asyncio.sleep(30)
            return body

        server.behaviour = hang
        with pytest.raises(InferError) as caught:
            await engine.infer_raw("grpc", "m", "1", b"request", {}, 0.2)
        assert (str(caught.value), caught.value.transient) == ("Deadline Exceeded", False)
    finally:
        await engine.aclose()


def test_header_blocks_decoded_once_only_without_the_dynamic_table() -> None:
    """A block is kept (and later taken from the cache) only when it was decoded with the
    dynamic table empty before and after; blocks that use the table are always decoded."""
    import hpack

    from runner.triton_grpc import _Connection

    conn = _Connection()
    indexing = hpack.Encoder()  # a peer that has not applied our table size 0 yet
    fields = [(":status", "200"), ("content-type", "application/grpc"), ("x-a", "1")]
    first = indexing.encode(fields)
    second = indexing.encode(fields)  # now refers to dynamic-table entries
    assert first != second
    expected = {k.encode(): v.encode() for k, v in fields}
    assert conn._heads.decode(first) == expected
    assert conn._heads.decode(second) == expected
    assert conn._heads.blocks == {}  # the table was in use: nothing kept

    fresh = _Connection()
    plain = hpack.Encoder()
    plain.header_table_size = 0  # what a peer does once it applied our SETTINGS
    block = plain.encode(fields)
    assert fresh._heads.decode(block) == expected
    assert fresh._heads.decode(plain.encode(fields)) == expected
    # kept (not the first block: its table-size update changed the decoder), with the table
    # size it holds for, and the same bytes again come from the cache
    assert list(fresh._heads.blocks.values()) == [(0, expected)]
    assert plain.encode(fields) in fresh._heads.blocks


async def test_a_frame_larger_than_announced_ends_the_connection() -> None:
    """Our SETTINGS announce the default 16 KiB frames: a larger frame is a protocol error,
    and the call fails as a transport failure instead of buffering whatever is announced."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1024)  # the preface and our first frames
        writer.write(b"\xff\xff\xff\x00\x00\x00\x00\x00\x01")  # a 16 MiB DATA frame header
        await writer.drain()
        await reader.read()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    client = TritonGrpc("127.0.0.1", server.sockets[0].getsockname()[1])
    try:
        with pytest.raises(ConnectionError, match="not valid HTTP/2"):
            await client.unary(METHOD, b"x", timeout_s=5.0)
    finally:
        client.close()
        server.close()
        await server.wait_closed()


@pytest.mark.parametrize(
    "frames",
    [
        b"\x00\x00\x06\x04\x00\x00\x00\x00\x00\x00\x05\x00\x00\x00\x00",  # MAX_FRAME_SIZE 0
        b"\x00\x00\x06\x04\x00\x00\x00\x00\x00\x00\x04\x80\x00\x00\x00",  # window 2^31
        b"\x00\x00\x00\x00\x08\x00\x00\x00\x01",  # padded DATA, empty: IndexError before
        b"\x00\x00\x10\x06\x00\x00\x00\x00\x00" + b"\x00" * 16,  # a 16-byte PING
    ],
    ids=["frame0", "window2^31", "empty-padded-data", "ping16"],
)
async def test_bad_frames_from_the_server_end_the_connection(frames: bytes) -> None:
    """Review N7: the peer's SETTINGS values, padding and PING length are checked as
    RFC 9113 says: the call fails as a transport failure (no loop on a peer's value, no
    IndexError out of data_received)."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1024)  # the preface and our first frames
        writer.write(frames)
        await writer.drain()
        await reader.read()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    client = TritonGrpc("127.0.0.1", server.sockets[0].getsockname()[1])
    try:
        with pytest.raises(ConnectionError, match="not valid HTTP/2"):
            await client.unary(METHOD, b"x", timeout_s=3.0)
    finally:
        client.close()
        server.close()
        await server.wait_closed()


def test_decoded_header_blocks_never_go_stale() -> None:
    """As on the control plane's server: a kept block is handed out only while decoding it
    again would give the same fields and leave the decoder as it is; fed the same random
    blocks as a plain decoder, the connection gives the same fields, fails at the same block."""
    import hpack

    from runner.triton_grpc import _Connection
    from tests.helpers.hpack_blocks import BLOCKS, check_against_reference

    hits = check_against_reference(_Connection, lambda h: h, dict)
    assert hits > 100
    conn = _Connection()
    conn._heads.decode(BLOCKS["zero-then-back"])
    conn._heads.decode(BLOCKS["insert-k"])
    conn._heads.decode(BLOCKS["zero-then-back"])
    with pytest.raises(hpack.HPACKError):
        conn._heads.decode(BLOCKS["newest"])


async def test_calls_on_an_open_connection_keep_deadline_and_cancel(
    server: Server, client: TritonGrpc
) -> None:
    """Once the connection is open, a call leaves at once with a timer for its deadline
    (no timeout scope): the deadline still answers DEADLINE_EXCEEDED and resets the stream,
    a cancelled caller still resets it, and nothing is left behind on the connection."""
    assert (await client.unary(METHOD, b"warm", timeout_s=5.0)).body == b"warm"
    conn = client._conn
    assert conn is not None

    async def hang(body: bytes, context: grpc.aio.ServicerContext) -> bytes:
        await asyncio.sleep(30)
        return body

    server.behaviour = hang
    loop = asyncio.get_running_loop()
    start = loop.time()
    answer = await client.unary(METHOD, b"slow", timeout_s=0.3)
    assert (answer.status, answer.message) == (4, "Deadline Exceeded")
    assert 0.25 < loop.time() - start < 2.0
    await asyncio.wait_for(server.cancelled.wait(), 5.0)
    assert not conn._streams

    server.cancelled.clear()
    task = asyncio.create_task(client.unary(METHOD, b"x", timeout_s=30.0))
    await asyncio.sleep(0.2)
    (stream,) = conn._streams.values()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.wait_for(server.cancelled.wait(), 5.0)
    assert not conn._streams and stream.timer is None  # its deadline timer is gone too

    server.behaviour = Server.echo
    assert (await client.unary(METHOD, b"next", timeout_s=5.0)).body == b"next"
    assert client._conn is conn and not conn._streams


async def test_a_call_refused_by_goaway_is_retried_on_a_new_connection() -> None:
    """A server that answers an open connection's call with GOAWAY (last stream 0: not
    processed) gets the call again on a new connection, as grpc retries it."""
    import hpack

    connections: list[int] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        number = len(connections)
        connections.append(number)
        enc = hpack.Encoder()
        enc.header_table_size = 0
        await reader.readexactly(24)  # the preface
        writer.write(_raw_frame(4, 0, 0, b""))  # our SETTINGS
        calls = 0
        try:
            while True:
                head = await reader.readexactly(9)
                length = int.from_bytes(head[:3], "big")
                kind, flags, sid = head[3], head[4], int.from_bytes(head[5:], "big") & 0x7FFFFFFF
                payload = await reader.readexactly(length)
                if kind == 4 and not flags & 1:
                    writer.write(_raw_frame(4, 1, 0, b""))
                elif kind == 0 and flags & 1:  # a call's message, whole
                    calls += 1
                    if number == 0 and calls == 2:  # the second call on the first connection
                        writer.write(_raw_frame(7, 0, 0, b"\x00\x00\x00\x01" + b"\x00" * 4))
                        continue
                    block = enc.encode([(":status", "200"), ("content-type", "application/grpc")])
                    trailers = enc.encode([("grpc-status", "0")])
                    writer.write(
                        _raw_frame(1, 4, sid, block)
                        + _raw_frame(0, 0, sid, payload)
                        + _raw_frame(1, 5, sid, trailers)
                    )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    listener = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    client = TritonGrpc("127.0.0.1", port)
    try:
        assert (await client.unary(METHOD, b"one", timeout_s=5.0)).body == b"one"
        first = client._conn
        answer = await client.unary(METHOD, b"two", timeout_s=5.0)
        assert (answer.status, answer.body) == (0, b"two")
        assert client._conn is not first and connections == [0, 1]
    finally:
        client.close()
        listener.close()


def _raw_frame(kind: int, flags: int, sid: int, payload: bytes) -> bytes:
    return len(payload).to_bytes(3, "big") + bytes([kind, flags]) + sid.to_bytes(4, "big") + payload
