"""control_plane/http_server.py's CoalescingTransport: the writes of one event-loop turn
leave in one write of the wrapped transport, in order; close/write_eof flush first; abort
drops what is pending; everything else is the wrapped transport's."""

from __future__ import annotations

import asyncio
from typing import Any

from control_plane.http_server import CoalescingTransport


class Recorder:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.calls: list[str] = []
        self.closing = False

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.calls.append("close")
        self.closing = True

    def abort(self) -> None:
        self.calls.append("abort")
        self.closing = True

    def write_eof(self) -> None:
        self.calls.append("write_eof")

    def get_write_buffer_size(self) -> int:
        return 5

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 1) if name == "peername" else default


async def turn() -> None:
    await asyncio.sleep(0)


async def test_writes_of_one_turn_leave_as_one_write_in_order() -> None:
    raw = Recorder()
    t = CoalescingTransport(raw, asyncio.get_running_loop())
    t.write(b"HTTP/1.1 200 OK\r\n\r\n")
    t.write(b"")
    t.writelines([b"body-", bytearray(b"1")])
    assert raw.writes == []
    assert t.get_write_buffer_size() == 5 + len(b"HTTP/1.1 200 OK\r\n\r\nbody-1")
    await turn()
    assert raw.writes == [b"HTTP/1.1 200 OK\r\n\r\nbody-1"]
    t.write(b"next")
    await turn()
    assert raw.writes[-1] == b"next" and len(raw.writes) == 2


async def test_close_and_write_eof_flush_first_abort_drops() -> None:
    raw = Recorder()
    t = CoalescingTransport(raw, asyncio.get_running_loop())
    t.write(b"last")
    t.write_eof()
    assert raw.writes == [b"last"] and raw.calls == ["write_eof"]
    t.write(b"bye")
    t.close()
    assert raw.writes == [b"last", b"bye"] and raw.calls[-1] == "close"
    await turn()  # the scheduled flush finds nothing (and a closing transport)
    assert raw.writes == [b"last", b"bye"]

    raw = Recorder()
    t = CoalescingTransport(raw, asyncio.get_running_loop())
    t.write(b"never")
    t.abort()
    await turn()
    assert raw.writes == [] and raw.calls == ["abort"]


async def test_other_attributes_are_the_wrapped_transports() -> None:
    raw = Recorder()
    t = CoalescingTransport(raw, asyncio.get_running_loop())
    assert t.get_extra_info("peername") == ("127.0.0.1", 1)
    assert t.is_closing() is False
