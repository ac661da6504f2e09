"""runner/ws_client.py, the runner channel's WebSocket client, against real servers on
loopback sockets:

- uvicorn's WebSocket side under a Starlette app (what the control plane runs): text and
  binary messages of every length class both ways (uvicorn refuses unmasked or badly
  masked client frames, so an echo proves the masking), the upgrade's headers, a 401
  refusal before the upgrade, a close code from the server (4401) echoed, our own close,
  answers of one loop turn joined into one message;
- ``websockets``' own server: fragmented messages, pings answered, a message over
  ``max_size`` failing the connection with 1009;
- a raw TCP server written here for what no library sends: frames split byte by byte,
  frames in the same packet as the 101 answer, masked or reserved-bit frames, unknown
  opcodes, invalid UTF-8, a peer that never answers keepalive pings.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import InvalidStatus
from websockets.utils import accept_key, apply_mask

from runner.ws_client import WsClosed, WsConnection, frame_bytes, ws_connect
from tests.conftest import free_port

STEP_S = 10.0


class Inbox:
    """Collects the messages a connection delivers; ``get()`` waits for the next one."""

    def __init__(self) -> None:
        self.messages: asyncio.Queue[bytes | str] = asyncio.Queue()

    def __call__(self, message: bytes | str) -> None:
        self.messages.put_nowait(message)

    async def get(self) -> bytes | str:
        return await asyncio.wait_for(self.messages.get(), STEP_S)


# --------------------------------------------------------------------------- uvicorn


class Uvicorn:
    def __init__(self) -> None:
        self.port = free_port()
        self.headers: dict[str, str] = {}
        self.received: list[Any] = []  # what the app read, each message as ASGI gives it
        self.close_code: int | None = None
        self.script: Callable[[WebSocket], Awaitable[None]] | None = None

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"


async def _ws_endpoint(ws: WebSocket) -> None:
    srv: Uvicorn = ws.app.state.srv
    srv.headers = dict(ws.headers)
    if ws.headers.get("authorization") != "Bearer good":
        body = {"error": {"code": "unauthorized"}}
        await ws.send_denial_response(JSONResponse(body, status_code=401))
        return
    await ws.accept()
    if srv.script is not None:
        await srv.script(ws)
        return
    try:  # echo, each message as it came
        while True:
            message = await ws.receive()
            if message["type"] == "websocket.disconnect":
                srv.close_code = message.get("code")
                return
            srv.received.append(message.get("bytes") or message.get("text"))
            if message.get("bytes") is not None:
                await ws.send_bytes(message["bytes"])
            else:
                await ws.send_text(message["text"])
    except WebSocketDisconnect as exc:
        srv.close_code = exc.code


@contextlib.asynccontextmanager
async def uvicorn_server() -> AsyncIterator[Uvicorn]:
    srv = Uvicorn()
    app = Starlette(routes=[WebSocketRoute("/ws", _ws_endpoint)])
    app.state.srv = srv
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=srv.port,
        log_level="warning",
        ws_per_message_deflate=False,
        ws_max_size=1 << 24,
        lifespan="off",
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    try:
        while not server.started:
            await asyncio.sleep(0.01)
        yield srv
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, STEP_S)


GOOD = {"Authorization": "Bearer good"}


async def test_messages_of_every_length_round_trip_through_uvicorn() -> None:
    async with uvicorn_server() as srv:
        inbox = Inbox()
        conn = await ws_connect(
            srv.url, inbox, additional_headers={**GOOD, "X-Sig": "abc"}, max_size=1 << 23
        )
        try:
            assert srv.headers["x-sig"] == "abc" and srv.headers["upgrade"] == "websocket"
            assert srv.headers["user-agent"].startswith("Python/")
            for size in (0, 1, 125, 126, 65535, 65536, 3_000_000):  # 7-, 16- and 64-bit lengths
                payload = bytes(i % 251 for i in range(size))
                conn.send(payload)
                assert await inbox.get() == payload, size
            conn.send("héllo ✓")
            assert await inbox.get() == "héllo ✓"
        finally:
            await conn.close()
        assert srv.close_code == 1000
        closed = await conn.wait_closed()  # uvicorn's answer to our close frame, recorded
        assert (closed.code, closed.sent) == (1000, 1000)


async def test_binary_messages_of_one_turn_are_joined_and_text_keeps_its_place() -> None:
    async with uvicorn_server() as srv:
        inbox = Inbox()
        conn = await ws_connect(srv.url, inbox, additional_headers=GOOD, batch_bytes=10)
        try:
            for message in (b"abc", b"def", "t1", b"ghi", b"0123456789", b"j"):
                conn.send(message)
            got = [await inbox.get() for _ in range(5)]
            # abc+def joined; text alone; ghi alone (ghi + 0123456789 is over 10 bytes)
            assert got == [b"abcdef", "t1", b"ghi", b"0123456789", b"j"]
            conn.send(b"k")
            assert conn._queue == [b"k"]  # waits for the end of the turn
            conn.send(b"l", now=True)  # written at once, with what was queued
            assert conn._queue == []
            assert await inbox.get() == b"kl"
        finally:
            await conn.close()


async def test_a_refused_upgrade_raises_invalid_status_with_its_code() -> None:
    async with uvicorn_server() as srv:
        with pytest.raises(InvalidStatus) as refused:
            await ws_connect(srv.url, Inbox(), additional_headers={"Authorization": "x"})
        assert refused.value.response.status_code == 401
        assert b"unauthorized" in refused.value.response.body


async def test_a_close_from_the_server_is_echoed_and_reported() -> None:
    async def revoke(ws: WebSocket) -> None:
        await ws.send_text("bye soon")
        await ws.close(code=4401, reason="runner revoked")

    async with uvicorn_server() as srv:
        srv.script = revoke
        inbox = Inbox()
        conn = await ws_connect(srv.url, inbox, additional_headers=GOOD)
        assert await inbox.get() == "bye soon"
        closed = await asyncio.wait_for(conn.wait_closed(), STEP_S)
        assert (closed.code, closed.reason, closed.sent) == (4401, "runner revoked", 4401)
        assert not conn.open
        with pytest.raises(WsClosed):
            conn.send(b"late")


async def test_a_refused_connection_raises_oserror() -> None:
    with pytest.raises(OSError):
        await ws_connect(f"ws://127.0.0.1:{free_port()}/ws", Inbox())


# --------------------------------------------------------------------------- websockets


@contextlib.asynccontextmanager
async def websockets_server(
    handler: Callable[[ServerConnection], Awaitable[None]],
) -> AsyncIterator[str]:
    async with serve(handler, "127.0.0.1", 0, compression=None, max_size=None) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        yield f"ws://127.0.0.1:{port}/"


async def test_fragmented_messages_are_assembled() -> None:
    async def fragments(ws: ServerConnection) -> None:
        await ws.send(["frag", "men", "ted ✓"])  # text in three frames
        await ws.send([b"\x00\x01", b"", b"\x02"])  # binary, one fragment empty
        await ws.send(b"whole")
        await ws.wait_closed()

    async with websockets_server(fragments) as url:
        inbox = Inbox()
        conn = await ws_connect(url, inbox)
        try:
            assert await inbox.get() == "fragmented ✓"
            assert await inbox.get() == b"\x00\x01\x02"
            assert await inbox.get() == b"whole"
        finally:
            await conn.close()


async def test_pings_from_the_server_are_answered_and_ours_get_pongs() -> None:
    latency: list[float] = []

    async def pinger(ws: ServerConnection) -> None:
        pong = await ws.ping(b"are you there")
        latency.append(await asyncio.wait_for(pong, STEP_S))
        await ws.send("pinged")
        await ws.wait_closed()

    async with websockets_server(pinger) as url:
        inbox = Inbox()
        conn = await ws_connect(url, inbox)
        try:
            assert await inbox.get() == "pinged"
            assert len(latency) == 1
            await asyncio.wait_for(conn.ping(), STEP_S)  # websockets answers ours
        finally:
            await conn.close()


async def test_a_message_over_max_size_fails_the_connection_with_1009() -> None:
    codes: list[int | None] = []

    async def big(ws: ServerConnection) -> None:
        await ws.send(b"x" * 1000)
        await ws.send(["a" * 600, "b" * 600])  # fragments each under, together over
        with contextlib.suppress(Exception):
            await ws.wait_closed()
        codes.append(ws.close_code)

    async with websockets_server(big) as url:
        inbox = Inbox()
        conn = await ws_connect(url, inbox, max_size=1000)
        assert await inbox.get() == b"x" * 1000
        closed = await asyncio.wait_for(conn.wait_closed(), STEP_S)
        assert closed.sent == 1009
        assert inbox.messages.empty()
    assert codes == [1009]


# --------------------------------------------------------------------------- raw server


class Raw:
    """One accepted connection of the raw server: the upgrade answered by hand, then bytes."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    async def read_frame(self) -> tuple[int, bytes]:
        """The client's next frame: (opcode, unmasked payload); it must be masked."""
        b0, b1 = await self.reader.readexactly(2)
        assert b1 & 0x80, "client frames must be masked"
        length = b1 & 0x7F
        if length == 126:
            (length,) = struct.unpack("!H", await self.reader.readexactly(2))
        elif length == 127:
            (length,) = struct.unpack("!Q", await self.reader.readexactly(8))
        key = await self.reader.readexactly(4)
        return b0 & 0x0F, apply_mask(await self.reader.readexactly(length), key)


def server_frame(opcode: int, payload: bytes, fin: bool = True, rsv: int = 0) -> bytes:
    n = len(payload)
    b0 = (0x80 if fin else 0) | rsv | opcode
    head = bytes((b0, n)) if n < 126 else struct.pack("!BBH", b0, 126, n)
    return head + payload


@contextlib.asynccontextmanager
async def raw_server(extra: bytes = b"") -> AsyncIterator[tuple[str, asyncio.Queue[Raw]]]:
    """A server that answers the upgrade (``extra`` in the same write) and hands over."""
    accepted: asyncio.Queue[Raw] = asyncio.Queue()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = (await reader.readuntil(b"\r\n\r\n")).decode()
        key = next(
            line.split(":", 1)[1].strip()
            for line in head.split("\r\n")
            if line.lower().startswith("sec-websocket-key:")
        )
        accept = accept_key(key)  # RFC 6455 4.2.2: what the client checks
        answer = (
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
        )
        writer.write(answer.encode() + extra)
        await accepted.put(Raw(reader, writer))

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"ws://127.0.0.1:{port}/", accepted
    finally:
        server.close()


async def test_frames_split_byte_by_byte_and_frames_with_the_answer_arrive_whole() -> None:
    first = server_frame(0x2, b"came with the 101")
    async with raw_server(extra=first) as (url, accepted):
        inbox = Inbox()
        conn = await ws_connect(url, inbox)
        raw = await asyncio.wait_for(accepted.get(), STEP_S)
        try:
            assert await inbox.get() == b"came with the 101"
            data = server_frame(0x1, ("ü" * 100 + "!" * 100).encode())
            data += server_frame(0x2, bytes(range(200)))
            for i in range(len(data)):  # one byte a write, each read by itself
                raw.writer.write(data[i : i + 1])
                await raw.writer.drain()
                await asyncio.sleep(0)
            assert await inbox.get() == "ü" * 100 + "!" * 100
            assert await inbox.get() == bytes(range(200))
            big = b"".join(server_frame(0x2, b"q" * 60000) for _ in range(3))
            raw.writer.write(big[:5])  # a header split, then the rest in one write
            await raw.writer.drain()
            raw.writer.write(big[5:])
            for _ in range(3):
                assert await inbox.get() == b"q" * 60000
            # our ping: the raw server answers it by hand
            waiter = conn.ping(b"k1")
            assert await raw.read_frame() == (0x9, b"k1")
            raw.writer.write(server_frame(0xA, b"k1"))
            await asyncio.wait_for(waiter, STEP_S)
            # theirs: answered with the same payload
            raw.writer.write(server_frame(0x9, b"p2"))
            assert await raw.read_frame() == (0xA, b"p2")
        finally:
            raw.writer.close()
            await conn.close()


@pytest.mark.parametrize(
    ("bad", "code"),
    [
        (bytes((0x82, 0x80 | 3)) + b"\x01\x02\x03\x04" + b"abc", 1002),  # masked by the server
        (server_frame(0x2, b"x", rsv=0x40), 1002),  # a reserved bit set (no extension agreed)
        (server_frame(0x3, b"x"), 1002),  # an unknown opcode
        (server_frame(0x0, b"x"), 1002),  # a continuation with nothing to continue
        (server_frame(0x2, b"a", fin=False) + server_frame(0x2, b"b"), 1002),  # no continuation
        (server_frame(0x9, b"p", fin=False), 1002),  # a fragmented control frame
        (server_frame(0x1, b"\xff\xfe"), 1007),  # text that is not UTF-8
    ],
)
async def test_protocol_errors_fail_the_connection_with_their_code(bad: bytes, code: int) -> None:
    async with raw_server() as (url, accepted):
        inbox = Inbox()
        conn = await ws_connect(url, inbox, close_timeout=STEP_S)
        raw = await asyncio.wait_for(accepted.get(), STEP_S)
        raw.writer.write(bad + server_frame(0x2, b"never delivered"))
        opcode, payload = await asyncio.wait_for(raw.read_frame(), STEP_S)
        assert opcode == 0x8 and struct.unpack("!H", payload[:2])[0] == code
        raw.writer.close()  # the server ends the TCP connection, as after any close frame
        closed = await asyncio.wait_for(conn.wait_closed(), STEP_S)
        assert (closed.code, closed.sent) == (1006, code)
        assert inbox.messages.empty()


async def test_a_peer_that_never_answers_pings_is_cut_off_with_1011() -> None:
    async with raw_server() as (url, accepted):
        conn = await ws_connect(url, Inbox(), ping_interval=0.05, ping_timeout=0.2)
        raw = await asyncio.wait_for(accepted.get(), STEP_S)
        assert (await asyncio.wait_for(raw.read_frame(), STEP_S))[0] == 0x9  # ignored
        while True:
            opcode, payload = await asyncio.wait_for(raw.read_frame(), STEP_S)
            if opcode == 0x8:
                break
        assert struct.unpack("!H", payload[:2])[0] == 1011
        assert payload[2:] == b"keepalive ping timeout"
        raw.writer.close()
        closed = await asyncio.wait_for(conn.wait_closed(), STEP_S)
        assert closed.sent == 1011


async def test_our_close_waits_for_the_servers_then_aborts_a_silent_one() -> None:
    async with raw_server() as (url, accepted):
        conn = await ws_connect(url, Inbox(), close_timeout=0.3)
        raw = await asyncio.wait_for(accepted.get(), STEP_S)
        closing = asyncio.create_task(conn.close(4000, "done"))
        opcode, payload = await asyncio.wait_for(raw.read_frame(), STEP_S)
        assert (opcode, payload) == (0x8, struct.pack("!H", 4000) + b"done")
        await asyncio.wait_for(closing, STEP_S)  # nobody answered: aborted after 0.3 s
        assert await raw.reader.read() == b""  # and the TCP connection is gone
        closed = await conn.wait_closed()
        assert (closed.code, closed.sent) == (1006, 4000)


async def test_an_exception_in_on_message_fails_the_connection_and_is_raised() -> None:
    def broken(message: bytes | str) -> None:
        raise ValueError(f"cannot read {message!r}")

    async with raw_server() as (url, accepted):
        conn: WsConnection = await ws_connect(url, broken)
        raw = await asyncio.wait_for(accepted.get(), STEP_S)
        raw.writer.write(server_frame(0x1, b"boom"))
        opcode, payload = await asyncio.wait_for(raw.read_frame(), STEP_S)
        assert opcode == 0x8 and struct.unpack("!H", payload[:2])[0] == 1011
        raw.writer.close()
        with pytest.raises(ValueError, match="cannot read 'boom'"):
            await asyncio.wait_for(conn.wait_closed(), STEP_S)


def test_client_frames_are_masked_with_fresh_keys() -> None:
    one, two = frame_bytes(0x2, b"same payload"), frame_bytes(0x2, b"same payload")
    assert one[1] & 0x80 and two[1] & 0x80
    assert one[2:6] != two[2:6]  # a new key each frame
    assert apply_mask(one[6:], one[2:6]) == b"same payload"


async def test_after_our_close_only_the_servers_close_frame_is_read() -> None:
    async with raw_server() as (url, accepted):
        inbox = Inbox()
        conn = await ws_connect(url, inbox, close_timeout=STEP_S)
        raw = await asyncio.wait_for(accepted.get(), STEP_S)
        closing = asyncio.create_task(conn.close())
        assert (await asyncio.wait_for(raw.read_frame(), STEP_S))[0] == 0x8
        late = server_frame(0x2, b"late answer") + server_frame(0x9, b"ping")
        raw.writer.write(late + server_frame(0x8, struct.pack("!H", 1000) + b"bye"))
        await raw.writer.drain()
        await asyncio.sleep(0.05)
        raw.writer.close()  # the server ends the TCP connection: close() returns
        await asyncio.wait_for(closing, STEP_S)
        closed = await conn.wait_closed()
        assert (closed.code, closed.reason, closed.sent) == (1000, "bye", 1000)
        assert inbox.messages.empty()  # the late message was not delivered
