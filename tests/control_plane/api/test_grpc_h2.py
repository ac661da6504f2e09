"""control_plane/api/grpc_h2.py with grpcio's own client (C-core, what tritonclient.grpc
uses) on a loopback port: bytes and statuses as grpcio's server gives them, metadata both
ways, messages larger than the HTTP/2 windows, compressed requests, deadlines, a client that
cancels, the size limit, unknown methods, streaming methods answered at once, a graceful stop
and garbage on the socket."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import hpack
import pytest
from google.protobuf import wrappers_pb2

from control_plane.api.grpc_h2 import CallContext, GrpcH2Server, Method, parse_timeout

SVC = "/test.Svc"
Bytes = wrappers_pb2.BytesValue
MAX = 8 << 20


class Handlers:
    def __init__(self) -> None:
        self.contexts: list[CallContext] = []
        self.cancelled = asyncio.Event()
        self.started = asyncio.Event()

    async def echo(self, request: Any, context: CallContext) -> Any:
        self.contexts.append(context)
        context.set_trailing_metadata((("x-request-id", "rid-1"), ("blob-bin", b"\x00\xff")))
        return Bytes(value=request.value[::-1])

    async def raw(self, request: Any, context: CallContext) -> Any:
        assert isinstance(request, bytes)  # Method(parse=bytes): no parse
        return Bytes(value=request).SerializeToString()  # bytes: sent as they are

    async def refuse(self, request: Any, context: CallContext) -> Any:
        await context.abort(
            grpc.StatusCode.INVALID_ARGUMENT,
            "100% wrong,\nnon-ASCII é→ü ",
            (("retry-after", "3"),),
        )

    async def hang(self, request: Any, context: CallContext) -> Any:
        self.started.set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            self.cancelled.set()
            raise
        return Bytes()

    async def boom(self, request: Any, context: CallContext) -> Any:
        raise ValueError("broken")

    async def stream(self, request: Any, context: CallContext) -> Any:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "streams are not served")

    async def slow(self, request: Any, context: CallContext) -> Any:
        await asyncio.sleep(0.3)
        return Bytes(value=b"done")


@pytest.fixture
async def served() -> AsyncIterator[tuple[GrpcH2Server, Handlers, str]]:
    h = Handlers()
    parse = Bytes.FromString
    methods = {
        f"{SVC}/Echo": Method(h.echo, parse),
        f"{SVC}/Refuse": Method(h.refuse, parse),
        f"{SVC}/Raw": Method(h.raw, bytes),
        f"{SVC}/Hang": Method(h.hang, parse),
        f"{SVC}/Boom": Method(h.boom, parse),
        f"{SVC}/Slow": Method(h.slow, parse),
        f"{SVC}/Stream": Method(h.stream, parse, streaming=True),
    }
    server = GrpcH2Server(methods, max_receive=MAX)
    port = await server.start("127.0.0.1", 0)
    yield server, h, f"127.0.0.1:{port}"
    await server.stop(0)


def _call(channel: grpc.aio.Channel, name: str) -> Any:
    return channel.unary_unary(
        f"{SVC}/{name}",
        request_serializer=Bytes.SerializeToString,
        response_deserializer=Bytes.FromString,
    )


async def test_answer_metadata_and_trailers(served: tuple[GrpcH2Server, Handlers, str]) -> None:
    _, h, target = served
    async with grpc.aio.insecure_channel(target) as channel:
        call = _call(channel, "Echo")(
            Bytes(value=b"abc"),
            metadata=(("authorization", "Bearer t"), ("x-bin", b"\x01\x02")),
            timeout=5.0,
        )
        assert (await call).value == b"cba"
        trailers = dict(await call.trailing_metadata())
        assert trailers["x-request-id"] == "rid-1"
        assert trailers["blob-bin"] == b"\x00\xff"
        assert await call.code() == grpc.StatusCode.OK
    meta = dict(h.contexts[0].invocation_metadata())
    assert meta["authorization"] == "Bearer t"
    assert meta["x-bin"] == b"\x01\x02"
    assert "content-type" not in meta and ":path" not in meta
    remaining = h.contexts[0].time_remaining()
    assert remaining is not None and remaining < 5.0
    assert h.contexts[0].peer().startswith("ipv4:127.0.0.1:")


async def test_bytes_in_bytes_out(served: tuple[GrpcH2Server, Handlers, str]) -> None:
    _, _, target = served
    async with grpc.aio.insecure_channel(target) as channel:
        answer = await _call(channel, "Raw")(Bytes(value=b"abc"), timeout=5.0)
        assert answer.value == Bytes(value=b"abc").SerializeToString()


async def test_many_calls_on_one_connection(served: tuple[GrpcH2Server, Handlers, str]) -> None:
    _, _, target = served
    async with grpc.aio.insecure_channel(target) as channel:
        echo = _call(channel, "Echo")
        bodies = [bytes([i % 256]) * (i * 37) for i in range(200)]
        answers = await asyncio.gather(*(echo(Bytes(value=b), timeout=10.0) for b in bodies))
        assert [a.value for a in answers] == [b[::-1] for b in bodies]


async def test_large_messages_both_ways(served: tuple[GrpcH2Server, Handlers, str]) -> None:
    _, _, target = served
    body = bytes(i % 253 for i in range(5 * 2**20))  # > every window and frame size
    async with grpc.aio.insecure_channel(
        target, options=[("grpc.max_receive_message_length", 64 << 20)]
    ) as channel:
        answer = await _call(channel, "Echo")(Bytes(value=body), timeout=30.0)
        assert answer.value == body[::-1]


async def test_compressed_requests(served: tuple[GrpcH2Server, Handlers, str]) -> None:
    _, _, target = served
    for algorithm in (grpc.Compression.Gzip, grpc.Compression.Deflate):
        async with grpc.aio.insecure_channel(target, compression=algorithm) as channel:
            answer = await _call(channel, "Echo")(Bytes(value=b"z" * 10000), timeout=5.0)
            assert answer.value == b"z" * 10000


async def test_errors_as_grpc_servers_give_them(
    served: tuple[GrpcH2Server, Handlers, str],
) -> None:
    _, _, target = served
    async with grpc.aio.insecure_channel(target) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await _call(channel, "Refuse")(Bytes(), timeout=5.0)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert caught.value.details() == "100% wrong,\nnon-ASCII é→ü "
        assert dict(caught.value.trailing_metadata())["retry-after"] == "3"

        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await _call(channel, "Nope")(Bytes(), timeout=5.0)
        assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED
        assert caught.value.details() == "Method not found!"

        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await _call(channel, "Boom")(Bytes(), timeout=5.0)
        assert caught.value.code() == grpc.StatusCode.UNKNOWN

        # a request over max_receive: refused by the transport, as grpcio does
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await _call(channel, "Echo")(Bytes(value=b"x" * (MAX + 10)), timeout=30.0)
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        # and the connection still serves
        assert (await _call(channel, "Echo")(Bytes(value=b"ok"), timeout=5.0)).value == b"ko"


async def test_streaming_method_answered_at_once(
    served: tuple[GrpcH2Server, Handlers, str],
) -> None:
    _, _, target = served
    async with grpc.aio.insecure_channel(target) as channel:
        call = channel.stream_stream(
            f"{SVC}/Stream",
            request_serializer=Bytes.SerializeToString,
            response_deserializer=Bytes.FromString,
        )(timeout=5.0)  # no request sent, stream left open
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call.read()
        assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED
        assert caught.value.details() == "streams are not served"


async def test_deadline_and_cancel_stop_the_handler(
    served: tuple[GrpcH2Server, Handlers, str],
) -> None:
    _, h, target = served
    async with grpc.aio.insecure_channel(target) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await _call(channel, "Hang")(Bytes(), timeout=0.3)
        assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        await asyncio.wait_for(h.cancelled.wait(), 5.0)

        h.cancelled.clear()
        h.started.clear()
        call = _call(channel, "Hang")(Bytes(), timeout=30.0)
        await asyncio.wait_for(h.started.wait(), 5.0)
        call.cancel()
        await asyncio.wait_for(h.cancelled.wait(), 5.0)


async def test_stop_lets_calls_in_flight_finish(
    served: tuple[GrpcH2Server, Handlers, str],
) -> None:
    server, _, target = served
    async with grpc.aio.insecure_channel(target) as channel:
        call = asyncio.ensure_future(_call(channel, "Slow")(Bytes(), timeout=10.0))
        await asyncio.sleep(0.1)
        await server.stop(5.0)
        assert (await call).value == b"done"
        with pytest.raises(grpc.aio.AioRpcError) as caught:  # the port is closed now
            await _call(channel, "Echo")(Bytes(), timeout=2.0)
        assert caught.value.code() in (
            grpc.StatusCode.UNAVAILABLE,
            grpc.StatusCode.DEADLINE_EXCEEDED,
        )


async def test_garbage_on_the_socket_closes_only_that_connection(
    served: tuple[GrpcH2Server, Handlers, str],
) -> None:
    _, _, target = served
    host, port = target.split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), 5.0)  # settings, maybe GOAWAY, then EOF
    assert data is not None
    writer.close()
    async with grpc.aio.insecure_channel(target) as channel:
        assert (await _call(channel, "Echo")(Bytes(value=b"ab"), timeout=5.0)).value == b"ba"


async def test_a_taken_port_is_an_error() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        server = GrpcH2Server({}, max_receive=MAX)
        with pytest.raises(OSError):
            await server.start("127.0.0.1", s.getsockname()[1])


def test_parse_timeout() -> None:
    assert parse_timeout(b"100m") == pytest.approx(0.1)
    assert parse_timeout(b"2S") == 2.0
    assert parse_timeout(b"1H") == 3600.0
    assert parse_timeout(b"5u") == pytest.approx(5e-6)
    assert parse_timeout(b"x") is None
    assert parse_timeout(b"123456789S") is None  # more than 8 digits
    assert parse_timeout(b"") is None


async def test_all_addresses_of_both_families() -> None:
    """``::`` listens on IPv4 and IPv6 alike, as grpcio's ``[::]:port``."""
    h = Handlers()
    server = GrpcH2Server({f"{SVC}/Echo": Method(h.echo, Bytes.FromString)}, max_receive=MAX)
    try:
        port = await server.start("::", 0)
    except OSError as exc:  # pragma: no cover - a host without IPv6
        pytest.skip(f"no IPv6 here: {exc}")
    try:
        for target in (f"127.0.0.1:{port}", f"[::1]:{port}"):
            async with grpc.aio.insecure_channel(target) as channel:
                answer = await _call(channel, "Echo")(Bytes(value=b"ab"), timeout=5.0)
                assert answer.value == b"ba"
    finally:
        await server.stop(0)


async def test_a_frame_larger_than_announced_closes_the_connection(
    served: tuple[GrpcH2Server, Handlers, str],
) -> None:
    """A client may not announce a frame over 16 KiB (we announce no larger size): the
    connection ends (GOAWAY, close) instead of buffering what it announced."""
    _, _, target = served
    host, port = target.split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\xff\xff\xff\x00\x00\x00\x00\x00\x01")
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), 5.0)  # until EOF: the server closed
    assert b"\x07\x00\x00\x00\x00" in data  # a GOAWAY frame (type 7) on stream 0
    writer.close()


async def test_tls_with_alpn_h2_and_the_reloader(tmp_path: Path) -> None:
    """With TLS: the reloader's ``h2_context`` (ALPN h2, the served certificate) lets
    grpcio's client in; a client that trusts another CA is refused."""
    import trustme

    from control_plane.tls import CertificateReloader

    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert_file, key_file = tmp_path / "server.pem", tmp_path / "server.key"
    cert.private_key_and_cert_chain_pem.write_to_path(str(cert_file))
    cert.private_key_pem.write_to_path(str(key_file))
    reloader = CertificateReloader(cert_file, key_file)

    h = Handlers()
    server = GrpcH2Server({f"{SVC}/Echo": Method(h.echo, Bytes.FromString)}, max_receive=MAX)
    port = await server.start("127.0.0.1", 0, ssl_context=reloader.h2_context)
    try:
        trusted = grpc.ssl_channel_credentials(root_certificates=ca.cert_pem.bytes())
        async with grpc.aio.secure_channel(f"localhost:{port}", trusted) as channel:
            answer = await _call(channel, "Echo")(Bytes(value=b"tls"), timeout=10.0)
            assert answer.value == b"slt"
        assert h.contexts[-1].peer().startswith("ipv4:127.0.0.1:")
        other = grpc.ssl_channel_credentials(root_certificates=trustme.CA().cert_pem.bytes())
        async with grpc.aio.secure_channel(f"localhost:{port}", other) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await _call(channel, "Echo")(Bytes(value=b"x"), timeout=5.0)
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        await server.stop(0)


# ---------------------------------------------------------------- hostile clients (raw frames)
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def _f(kind: int, flags: int, sid: int, payload: bytes) -> bytes:
    n = len(payload)
    return struct.pack(">HBBBL", n >> 8, n & 0xFF, kind, flags, sid) + payload


def _settings(*pairs: tuple[int, int]) -> bytes:
    return _f(4, 0, 0, b"".join(struct.pack(">HL", k, v) for k, v in pairs))


def _head(path: str = f"{SVC}/Echo", extra: tuple[tuple[str, str], ...] = ()) -> bytes:
    enc = hpack.Encoder()
    enc.header_table_size = 0
    return enc.encode(
        [
            (":method", "POST"),
            (":scheme", "http"),
            (":path", path),
            (":authority", "x"),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
            *extra,
        ]
    )


def _msg(body: bytes) -> bytes:
    return b"\x00" + struct.pack(">L", len(body)) + body


def _data(sid: int, data: bytes) -> bytes:
    """``data`` in DATA frames of 16 KiB, the last one ending the stream."""
    parts = [data[i : i + 16384] for i in range(0, len(data), 16384)]
    return b"".join(_f(0, 0x1 if i == len(parts) - 1 else 0, sid, p) for i, p in enumerate(parts))


def _frames(data: bytes) -> list[tuple[int, int, int, bytes]]:
    out, i = [], 0
    while len(data) - i >= 9:
        hi, lo, kind, flags, sid = struct.unpack_from(">HBBBL", data, i)
        n = (hi << 8) | lo
        out.append((kind, flags, sid, data[i + 9 : i + 9 + n]))
        i += 9 + n
    return out


async def _until_closed(target: str, *chunks: bytes, timeout: float = 5.0) -> list[Any]:
    """Send ``chunks`` after the preface; the frames the server sent until it closed (a
    TimeoutError when it does not close within ``timeout``)."""
    host, port = target.split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(PREFACE + b"".join(chunks))
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), timeout)
    finally:
        writer.close()
    return _frames(data)


def _goaway_code(frames: list[Any]) -> int:
    codes = [struct.unpack(">LL", p)[1] for k, _, _, p in frames if k == 7]
    assert codes, f"no GOAWAY in {frames}"
    return int(codes[0])


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        (_settings((5, 0)), 0x1),  # MAX_FRAME_SIZE 0: spun the loop forever (review B1)
        (_settings((5, 1)), 0x1),  # MAX_FRAME_SIZE 1: 10x amplification
        (_settings((5, 1 << 24)), 0x1),  # over 2^24-1: struct.error, call never answered
        (_settings((4, 1 << 31)), 0x3),  # INITIAL_WINDOW_SIZE over 2^31-1
        (_settings((2, 2)), 0x1),  # ENABLE_PUSH 2
        (_f(4, 0, 0, b"\x00" * 5), 0x6),  # SETTINGS not a multiple of 6 bytes
        (_f(4, 0, 1, b""), 0x1),  # SETTINGS on a stream
        (_f(4, 1, 0, b"\x00" * 6), 0x6),  # SETTINGS ACK with a payload
        (_f(8, 0, 0, b"\x00\x00\x00\x00"), 0x1),  # WINDOW_UPDATE of 0
        (_f(8, 0, 0, b"\x7f\xff\xff\xff"), 0x3),  # connection window over 2^31-1
        (_f(6, 0, 0, b"\x00" * 16384), 0x6),  # a 16 KiB PING (echoed: review B4)
        (_f(6, 0, 1, b"\x00" * 8), 0x1),  # PING on a stream
    ],
    ids=[
        "frame0",
        "frame1",
        "frame2^24",
        "window2^31",
        "push2",
        "settings5bytes",
        "settings-on-stream",
        "ack-payload",
        "window-update0",
        "window-overflow",
        "ping16k",
        "ping-on-stream",
    ],
)
async def test_bad_settings_end_the_connection(
    served: tuple[GrpcH2Server, Handlers, str], frame: bytes, code: int
) -> None:
    """RFC 9113 §6.5.2 / §6.9: a bad SETTINGS or WINDOW_UPDATE value is a connection error
    (GOAWAY with its code, then close), never a value the server loops on."""
    _, _, target = served
    frames = await _until_closed(target, frame)
    assert _goaway_code(frames) == code
    async with grpc.aio.insecure_channel(target) as channel:  # the server still serves
        assert (await _call(channel, "Echo")(Bytes(value=b"ab"), timeout=5.0)).value == b"ba"


async def test_header_blocks_are_bounded_before_decoding(
    served: tuple[GrpcH2Server, Handlers, str],
) -> None:
    """Review B2: 16 KiB of HPACK table-size updates (free for the client, milliseconds of
    pure-Python decoding per KiB, nothing towards the header-list size), or a header block
    continued past 16 KiB, end the connection before the decoder runs; the server announces
    the limit (SETTINGS_MAX_HEADER_LIST_SIZE)."""
    _, _, target = served
    updates = b"\x20" * 16000
    frames = await _until_closed(target, _settings(), _f(1, 0x5, 1, updates))
    assert _goaway_code(frames) == 0x9  # COMPRESSION_ERROR
    server_settings = frames[0][3]
    pairs = dict(
        struct.unpack(">HL", server_settings[i : i + 6]) for i in range(0, len(server_settings), 6)
    )
    assert pairs[6] == 16384
    frames = await _until_closed(
        target,
        _settings(),
        _f(1, 0x0, 1, b"\x82" * 16000),  # HEADERS without END_HEADERS
        _f(9, 0x0, 1, b"\x82" * 1000),  # CONTINUATION past 16 KiB (old cap: 1 MiB)
    )
    assert _goaway_code(frames) == 0xB  # ENHANCE_YOUR_CALM


async def test_metadata_up_to_the_limit_is_served(
    served: tuple[GrpcH2Server, Handlers, str],
) -> None:
    _, h, target = served
    async with grpc.aio.insecure_channel(target) as channel:
        call = _call(channel, "Echo")(
            Bytes(value=b"ab"), metadata=(("x-big", "v" * 12000),), timeout=5.0
        )
        assert (await call).value == b"ba"
    assert dict(h.contexts[0].invocation_metadata())["x-big"] == "v" * 12000


async def _frames_for(target: str, seconds: float, *chunks: bytes) -> list[Any]:
    """The frames the server sent within ``seconds`` of ``chunks``."""
    host, port = target.split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    data = b""
    try:
        writer.write(PREFACE + b"".join(chunks))
        await writer.drain()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                while chunk := await reader.read(1 << 16):
                    data += chunk
    finally:
        writer.close()
    return _frames(data)


async def test_request_bytes_are_bounded_by_the_windows_given(
    served: tuple[GrpcH2Server, Handlers, str],
) -> None:
    """Review B3: a stream's window grows to its message's announced length only from a
    per-connection pool (two max-size requests); others wait; a client that sends past the
    windows it was given is cut off (FLOW_CONTROL_ERROR) instead of parking 8 MiB per stream."""
    _, _, target = served
    prefix = b"\x00" + struct.pack(">L", MAX)  # a message of max_receive bytes
    opens = b"".join(
        _f(1, 0x4, sid, _head(f"{SVC}/Hang")) + _f(0, 0, sid, prefix + b"x" * 100)
        for sid in (1, 3, 5, 7)
    )
    frames = await _frames_for(target, 1.0, _settings(), opens)
    granted = {sid for kind, _, sid, _ in frames if kind == 8 and sid}
    assert granted == {1, 3}
    chunk = _f(0, 0, 5, b"x" * 16384)
    frames = await _until_closed(target, _settings(), opens, chunk * 5)  # stream 5 past its 64 KiB
    assert _goaway_code(frames) == 0x3
    frames = await _until_closed(  # a message of 100 bytes, then 70 KB
        target,
        _settings(),
        _f(1, 0x4, 1, _head(f"{SVC}/Hang")),
        _f(0, 0, 1, _msg(b"x" * 95)),
        _f(0, 0, 1, b"x" * 16384) * 5,
    )
    assert _goaway_code(frames) == 0x3


async def test_large_requests_in_parallel_wait_for_the_pool(
    served: tuple[GrpcH2Server, Handlers, str],
) -> None:
    _, _, target = served
    async with grpc.aio.insecure_channel(
        target, options=[("grpc.max_receive_message_length", 64 << 20)]
    ) as channel:
        values = [bytes([i]) * (6 << 20) for i in range(5)]
        answers = await asyncio.gather(
            *(_call(channel, "Echo")(Bytes(value=v), timeout=20.0) for v in values)
        )
    assert [a.value for a in answers] == [v[::-1] for v in values]


async def test_inflated_requests_count_against_the_connection(
    served: tuple[GrpcH2Server, Handlers, str],
) -> None:
    """Review B3/S6: 8 KB of gzip that inflates to 7 MiB buys 7 MiB of the connection's
    pool while the handler holds it; past two of them the call is refused."""
    _, _, target = served
    async with grpc.aio.insecure_channel(target) as channel:
        calls = [
            _call(channel, "Hang")(
                Bytes(value=bytes(7 << 20)), timeout=3.0, compression=grpc.Compression.Gzip
            )
            for _ in range(5)
        ]
        codes = []
        for call in calls:
            with contextlib.suppress(grpc.aio.AioRpcError):
                await call
            codes.append(await call.code())
    assert codes.count(grpc.StatusCode.RESOURCE_EXHAUSTED) >= 3, codes


async def test_a_client_that_does_not_read_is_not_buffered_for(
    served: tuple[GrpcH2Server, Handlers, str],
) -> None:
    """Review B4: PINGs (or calls) from a client that never reads its socket: once the
    transport's buffer passes its high-water mark the server stops reading, so the kernel
    pushes back on the client instead of the server's memory growing."""
    server, _, target = served
    host, port = target.split(":")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect((host, int(port)))
    sock.setblocking(False)
    _, writer = await asyncio.open_connection(sock=sock)
    writer.write(PREFACE + _settings())
    pings = _f(6, 0, 0, b"12345678") * 4096
    sent = 0
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(3.0):
            while sent < 64 << 20:
                writer.write(pings)
                sent += len(pings)
                await writer.drain()
    (conn,) = server.connections
    assert conn.transport is not None
    buffered = conn.transport.get_write_buffer_size()
    assert buffered < 1 << 20, (buffered, sent)
    assert sent < 32 << 20  # the client was pushed back (it would send 64 MiB in 3 s)
    writer.close()


@pytest.mark.parametrize(
    "frame",
    [_f(1, 0x4 | 0x8, 1, b""), _f(1, 0x4 | 0x8, 1, b"\x05abc"), _f(0, 0x8, 1, b"")],
    ids=["headers-empty", "headers-pad-too-long", "data-empty"],
)
async def test_bad_padding_is_a_protocol_error(
    served: tuple[GrpcH2Server, Handlers, str], frame: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    """Review S4: a padded frame without room for its padding is a PROTOCOL_ERROR GOAWAY,
    not an IndexError traceback logged per connection."""
    _, _, target = served
    opening = _f(1, 0x4, 1, _head(f"{SVC}/Hang")) if frame[3] == 0 else b""
    with caplog.at_level(logging.WARNING):
        frames = await _until_closed(target, _settings(), opening, frame)
    assert _goaway_code(frames) == 0x1
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


async def test_bad_binary_metadata_is_answered(
    served: tuple[GrpcH2Server, Handlers, str],
) -> None:
    """Review S5: a ``-bin`` value that is not base64 got no answer (the stream leaked)."""
    server, _, target = served
    frames = await _frames_for(
        target,
        1.0,
        _settings(),
        _f(1, 0x4, 1, _head(extra=(("x-bin", "a"),))),
        _f(0, 0x1, 1, _msg(Bytes(value=b"ab").SerializeToString())),
    )
    trailers = [p for k, fl, sid, p in frames if k == 1 and sid == 1 and fl & 0x1]
    assert trailers, frames
    fields = dict(hpack.Decoder().decode(trailers[-1]))
    assert fields["grpc-status"] == str(grpc.StatusCode.INTERNAL.value[0])
    assert all(not c.busy for c in server.connections)


async def test_rapid_reset_ends_the_connection(
    served: tuple[GrpcH2Server, Handlers, str],
) -> None:
    """Review S1 (CVE-2023-44487): streams opened and reset at once never counted against
    MAX_CONCURRENT_STREAMS; past the reset bucket's burst (1000): GOAWAY ENHANCE_YOUR_CALM."""
    _, _, target = served
    head = _head(f"{SVC}/Hang")
    burst = b"".join(
        _f(1, 0x4, sid, head) + _f(0, 0x1, sid, _msg(b"")) + _f(3, 0, sid, b"\x00\x00\x00\x08")
        for sid in range(1, 2 * 1100, 2)
    )
    frames = await _until_closed(target, _settings(), burst)
    assert _goaway_code(frames) == 0xB


async def test_a_client_cancelling_calls_is_not_sent_away(
    served: tuple[GrpcH2Server, Handlers, str],
) -> None:
    """Review 2, item 4: 300 calls cancelled by an honest client (grpc.aio's cancel) are
    within the reset bucket: no GOAWAY, and the next call on the connection is answered."""
    _, _, target = served
    head = _head(f"{SVC}/Hang")
    cancels = b"".join(
        _f(1, 0x4, sid, head) + _f(0, 0x1, sid, _msg(b"")) + _f(3, 0, sid, b"\x00\x00\x00\x08")
        for sid in range(1, 2 * 300, 2)
    )
    last = 2 * 300 + 1
    echo = _f(1, 0x4, last, _head(f"{SVC}/Echo")) + _data(last, _msg(b"\x0a\x02hi"))
    frames = await _frames_for(target, 2.0, _settings(), cancels, echo)
    assert not [p for k, _, _, p in frames if k == 7], "GOAWAY sent"
    assert any(k == 0 and sid == last for k, _, sid, _ in frames)  # its answer's message


async def test_empty_data_frames_are_bounded(
    served: tuple[GrpcH2Server, Handlers, str],
) -> None:
    """Review S3: empty DATA frames on an open stream grew a list without end."""
    _, _, target = served
    frames = await _until_closed(
        target, _settings(), _f(1, 0x4, 1, _head(f"{SVC}/Hang")), _f(0, 0, 1, b"") * 1200
    )
    assert _goaway_code(frames) == 0xB


async def test_silent_connections_and_stalled_answers_end() -> None:
    """Review S2: a connection that never sends the preface, one that goes quiet, and an
    answer stuck on a zero window past the call's deadline are all ended."""
    h = Handlers()
    methods = {f"{SVC}/Echo": Method(h.echo, Bytes.FromString)}
    server = GrpcH2Server(methods, max_receive=MAX, idle_s=0.8, preface_s=0.3, stall_s=0.5)
    port = await server.start("127.0.0.1", 0)
    target = f"127.0.0.1:{port}"
    try:
        host, _ = target.split(":")
        reader, writer = await asyncio.open_connection(host, port)  # says nothing
        assert await asyncio.wait_for(reader.read(), 3.0) is not None  # closed by the server
        writer.close()
        frames = await _until_closed(target, _settings(), timeout=3.0)  # preface, then quiet
        assert _goaway_code(frames) == 0x0
        value = Bytes(value=b"x" * 100_000).SerializeToString()
        frames = await _frames_for(
            target,
            2.0,
            _settings((4, 0)),  # INITIAL_WINDOW_SIZE 0: no answer byte may be sent
            _f(1, 0x4, 1, _head(extra=(("grpc-timeout", "300m"),))),
            _data(1, _msg(value)),
        )
        assert (3, 0, 1, b"\x00\x00\x00\x08") in frames  # RST_STREAM CANCEL
        assert not any(c.busy for c in server.connections)
    finally:
        await server.stop(0)


async def test_a_reused_stream_id_is_reset(served: tuple[GrpcH2Server, Handlers, str]) -> None:
    """Review N2: HEADERS on a stream id already used were dropped silently (the client's
    call hung until its deadline); now RST_STREAM STREAM_CLOSED."""
    _, _, target = served
    call = _f(1, 0x4, 3, _head()) + _f(0, 0x1, 3, _msg(Bytes(value=b"ab").SerializeToString()))
    frames = await _frames_for(target, 1.0, _settings(), call, _f(1, 0x5, 1, _head()))
    assert (3, 0, 1, b"\x00\x00\x00\x05") in frames


async def test_metadata_over_the_limit_fails_only_its_call(
    served: tuple[GrpcH2Server, Handlers, str],
) -> None:
    """Review B2 (related): 70 KB of metadata ended the whole connection, killing the other
    calls on it; now that call alone gets RESOURCE_EXHAUSTED (its header block skipped
    undecoded, which is safe once the client has ACKed our SETTINGS: no dynamic table)."""
    _, _, target = served
    async with grpc.aio.insecure_channel(target) as channel:
        await _call(channel, "Echo")(Bytes(value=b"warm"), timeout=5.0)  # SETTINGS ACKed
        other = asyncio.ensure_future(_call(channel, "Slow")(Bytes(), timeout=5.0))
        await asyncio.sleep(0.05)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await _call(channel, "Echo")(
                Bytes(value=b"ab"), metadata=(("x-big", "v" * 70000),), timeout=5.0
            )
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "exceeds hard limit" in (caught.value.details() or "")
        assert (await other).value == b"done"


async def test_a_settings_frame_of_many_entries_is_refused(
    served: tuple[GrpcH2Server, Handlers, str],
) -> None:
    """Review 2, item 1: SETTINGS full of window changes re-walked every open stream per
    entry; over 32 entries in one frame: GOAWAY ENHANCE_YOUR_CALM (nghttp2's limit)."""
    _, _, target = served
    frames = await _until_closed(target, _settings(*[(4, 65535 + i) for i in range(33)]))
    assert _goaway_code(frames) == 0xB
    ok = await _frames_for(target, 1.0, _settings(*[(4, 65535 + i) for i in range(32)]))
    assert not [p for k, _, _, p in ok if k == 7], "32 entries are fine"


def test_decoded_header_blocks_never_go_stale() -> None:
    """A kept header block is handed out only while decoding it again would give the same
    fields and leave the decoder as it is: after a dynamic-table change (an insert, a size
    update), blocks are decoded again. Fed the same random blocks as a plain decoder, the
    connection gives the same fields and fails at the same block."""
    from control_plane.api.grpc_h2 import _Connection
    from tests.helpers.hpack_blocks import BLOCKS, check_against_reference

    server = GrpcH2Server({}, max_receive=MAX)

    def joined(fields: list[tuple[bytes, bytes]]) -> dict[bytes, bytes]:
        out: dict[bytes, bytes] = {}
        for k, v in fields:
            out[k] = out[k] + b"," + v if k in out else v
        return out

    hits = check_against_reference(lambda: _Connection(server), lambda h: h.fields, joined)
    assert hits > 100  # the cache was used, not bypassed

    # the stale case by hand: a block that empties the table and sets it back was kept;
    # after an insert, the same bytes must empty the table again
    conn = _Connection(server)
    conn._heads.decode(BLOCKS["zero-then-back"])
    assert BLOCKS["zero-then-back"] in conn._heads.blocks
    conn._heads.decode(BLOCKS["insert-k"])
    conn._heads.decode(BLOCKS["zero-then-back"])
    with pytest.raises(hpack.HPACKError):  # the entry is gone, as for any decoder
        conn._heads.decode(BLOCKS["newest"])
    # and an insert that a table of size 0 dropped is made again once the size is back
    conn = _Connection(server)
    conn._heads.decode(BLOCKS["zero-insert-b"])
    conn._heads.decode(BLOCKS["insert-b"])  # kept: the table stayed empty (size 0)
    conn._heads.decode(BLOCKS["back"])
    conn._heads.decode(BLOCKS["insert-b"])
    assert conn._heads.decode(BLOCKS["newest"]).fields == {b"x-b": b"2"}


async def test_a_repeated_header_block_is_worked_out_once_and_answers_the_same(
    served: tuple[GrpcH2Server, Handlers, str],
) -> None:
    """The same header block call after call (what clients send) is decoded and planned
    (method, deadline, metadata) once, then shared: every call gets its own answer, with
    the block's metadata and deadline; a refusal the block carries (bad -bin metadata, an
    unknown method) is given to each call."""
    server, h, target = served
    msg = _msg(Bytes(value=b"ab").SerializeToString())
    good = _head(extra=(("x-user", "u1"), ("grpc-timeout", "5S")))
    bad = _head(extra=(("x-bin", "a"),))
    unknown = _head(f"{SVC}/Nope")
    chunks = [_settings()]
    sid = 1
    for block in (good, good, good, bad, bad, unknown, unknown, good):
        chunks += [_f(1, 0x4, sid, block), _f(0, 0x1, sid, msg)]
        sid += 2
    frames = await _frames_for(target, 1.0, *chunks)
    dec = hpack.Decoder()
    status = {}
    for kind, flags, stream, payload in frames:
        if kind == 1:
            fields = dict(dec.decode(payload))
            if flags & 0x1:
                status[stream] = fields["grpc-status"]
    internal = str(grpc.StatusCode.INTERNAL.value[0])
    unimplemented = str(grpc.StatusCode.UNIMPLEMENTED.value[0])
    assert [status.get(s) for s in range(1, sid, 2)] == [
        *("0", "0", "0"),
        *(internal, internal),
        *(unimplemented, unimplemented),
        "0",
    ]
    assert len(h.contexts) == 4
    assert all(c.invocation_metadata() == (("x-user", "u1"),) for c in h.contexts)
    remaining = [c.time_remaining() for c in h.contexts]
    assert all(r is not None and 3.0 < r <= 5.0 for r in remaining)
    conn = next(iter(server.connections), None)
    assert conn is None or good in conn._heads.blocks  # the block was kept (the table is size 0)
