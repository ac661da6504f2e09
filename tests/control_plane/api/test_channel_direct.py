"""The runner channel's direct link (``control_plane/api/channel_direct.py``) on a real
listener: the control plane's own uvicorn config (``server_config``) on a loopback socket, a
WebSocket route that takes the link as the channel route does, and a ``websockets`` client.

Messages reach the callback in order straight from the protocol (text, binary, fragmented),
frames sent in one event-loop turn go out as one binary message (text on its own), writes
after the close are refused, and a server without the link (``ws="auto"``) leaves the route
on ASGI."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect
from websockets.asyncio.client import connect

from control_plane.api.channel_direct import EXTENSION, FrameBatcher
from control_plane.http_server import server_config
from control_plane.settings import Settings
from tests.helpers.listener import free_port, serving

STEP_S = 5.0


class Echo:
    """A route that answers each message with ``got:<message>`` and, for ``pair``, two
    binary frames in one turn; it records whether it ran on the link."""

    def __init__(self) -> None:
        self.linked: list[bool] = []
        self.refused_after_close: list[bool] = []

    async def run(self, ws: WebSocket) -> None:
        await ws.accept()
        link = ws.scope.get("extensions", {}).get(EXTENSION)
        self.linked.append(link is not None)
        if link is None:
            try:
                while True:
                    text = await ws.receive_text()
                    await ws.send_text(f"got:{text}")
            except WebSocketDisconnect:
                return
        batcher = FrameBatcher(link)
        tasks: set[asyncio.Task[None]] = set()

        def on_message(data: bytes | str) -> None:
            if data == "pair":
                for part in (b"one", b"two"):  # the same turn: one message
                    task = asyncio.get_running_loop().create_task(batcher.send(part))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                return
            reply: bytes | str = f"got:{data}" if isinstance(data, str) else b"got:" + data
            task = asyncio.get_running_loop().create_task(batcher.send(reply))
            tasks.add(task)
            task.add_done_callback(tasks.discard)

        link.attach(on_message)
        message = await ws.receive()  # only the disconnect comes through ASGI now
        assert message["type"] == "websocket.disconnect", message
        try:
            await batcher.send(b"late")
        except ConnectionError:
            self.refused_after_close.append(True)


def _serve(app: Starlette, **kw: Any) -> Iterator[int]:
    port = free_port()
    config = server_config(app, Settings(), "127.0.0.1", port, log_level="warning", **kw)
    with serving(config):
        yield port


@pytest.fixture
def echo() -> Echo:
    return Echo()


@pytest.fixture
def port(echo: Echo) -> Iterator[int]:
    yield from _serve(Starlette(routes=[WebSocketRoute("/ws", echo.run)]))


@pytest.fixture
def asgi_port(echo: Echo) -> Iterator[int]:
    yield from _serve(Starlette(routes=[WebSocketRoute("/ws", echo.run)]), ws="auto")


async def test_messages_skip_asgi_in_order_and_one_turn_is_one_message(
    echo: Echo, port: int
) -> None:
    async with connect(f"ws://127.0.0.1:{port}/ws", proxy=None) as ws:
        await ws.send("a")
        await ws.send(b"\x00\x01")
        await ws.send(["fragm", "ented"])  # one message in two frames
        got = [await asyncio.wait_for(ws.recv(), STEP_S) for _ in range(3)]
        assert got == ["got:a", b"got:\x00\x01", "got:fragmented"]
        await ws.send("pair")
        assert await asyncio.wait_for(ws.recv(), STEP_S) == b"onetwo"
    deadline = time.monotonic() + STEP_S
    while not echo.refused_after_close and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    assert echo.linked == [True]
    assert echo.refused_after_close == [True]


async def test_without_the_link_the_route_stays_on_asgi(echo: Echo, asgi_port: int) -> None:
    async with connect(f"ws://127.0.0.1:{asgi_port}/ws", proxy=None) as ws:
        await ws.send("a")
        assert await asyncio.wait_for(ws.recv(), STEP_S) == "got:a"
    assert echo.linked == [False]
