"""HTTP/2 wire pieces (RFC 9113, HPACK RFC 7541) shared by the control plane's gRPC server
(``control_plane/api/grpc_h2.py``) and the runner's gRPC client to Triton
(``runner/triton_grpc.py``): frame and setting numbers, the frame head, HPACK literals
without indexing (no encoder state), and the SETTINGS checks of RFC 9113 §6.5.2. Both
packages depend on ``gpufleet``; neither imports the other."""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any, Generic, TypeVar

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
# frame types
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY = range(8)
WINDOW_UPDATE, CONTINUATION = 8, 9
# flags
END_STREAM = ACK = 0x1
END_HEADERS = 0x4
PADDED = 0x8
PRIORITY_FLAG = 0x20
# settings
S_HEADER_TABLE_SIZE, S_ENABLE_PUSH, S_MAX_CONCURRENT_STREAMS = 1, 2, 3
S_INITIAL_WINDOW_SIZE, S_MAX_FRAME_SIZE, S_MAX_HEADER_LIST_SIZE = 4, 5, 6
# error codes (RST_STREAM / GOAWAY)
E_NO_ERROR, E_PROTOCOL_ERROR, E_FLOW_CONTROL, E_FRAME_SIZE = 0x0, 0x1, 0x3, 0x6
E_REFUSED_STREAM, E_CANCEL, E_ENHANCE_YOUR_CALM, E_INADEQUATE_SECURITY = 0x7, 0x8, 0xB, 0xC

MAX_WINDOW = 2**31 - 1
MAX_FRAME = 16384  # HTTP/2's default SETTINGS_MAX_FRAME_SIZE: we announce no other
DEFAULT_WINDOW = 65535
U32 = struct.Struct(">L")
HEAD = struct.Struct(">HBBBL")  # 24-bit length as (high 16, low 8), type, flags, stream id


class H2Error(ValueError):
    """A connection error (RFC 9113 §5.4.1): GOAWAY with ``code``, then the connection
    closes."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def frame(kind: int, flags: int, stream: int, length: int) -> bytes:
    """A frame's 9-byte head (the payload follows it)."""
    return HEAD.pack(length >> 8, length & 0xFF, kind, flags, stream)


def hpack_int(value: int, prefix_bits: int, first: int) -> bytes:
    """An HPACK integer with an N-bit prefix, OR-ed into ``first``'s high bits."""
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes([first | value])
    out = bytearray([first | limit])
    value -= limit
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def literal(name: bytes | int, value: bytes) -> bytes:
    """A header field as an HPACK literal without indexing: a static-table name index or a
    literal name, and a literal (not Huffman-coded) value."""
    head = (
        hpack_int(name, 4, 0)
        if isinstance(name, int)
        else b"\x00" + hpack_int(len(name), 7, 0) + name
    )
    return head + hpack_int(len(value), 7, 0) + value


def check_settings(payload: bytes, flags: int, stream: int) -> list[tuple[int, int]]:
    """The (key, value) pairs of a SETTINGS frame, each value checked as RFC 9113 §6.5.2
    asks (H2Error otherwise: no value a peer sends can make us loop or overflow); an ACK
    carries none."""
    if stream != 0:
        raise H2Error(E_PROTOCOL_ERROR, "SETTINGS on a stream")
    if flags & ACK:
        if payload:
            raise H2Error(E_FRAME_SIZE, "SETTINGS ACK with a payload")
        return []
    if len(payload) % 6:
        raise H2Error(E_FRAME_SIZE, f"SETTINGS of {len(payload)} bytes")
    pairs = []
    for i in range(0, len(payload), 6):
        key, value = struct.unpack_from(">HL", payload, i)
        if key == S_ENABLE_PUSH and value > 1:
            raise H2Error(E_PROTOCOL_ERROR, f"SETTINGS_ENABLE_PUSH {value}")
        if key == S_INITIAL_WINDOW_SIZE and value > MAX_WINDOW:
            raise H2Error(E_FLOW_CONTROL, f"SETTINGS_INITIAL_WINDOW_SIZE {value}")
        if key == S_MAX_FRAME_SIZE and not 16384 <= value <= 16777215:
            raise H2Error(E_PROTOCOL_ERROR, f"SETTINGS_MAX_FRAME_SIZE {value}")
        pairs.append((key, value))
    return pairs


T = TypeVar("T")


class BlockCache(Generic[T]):
    """HPACK header blocks decoded once, per connection: ``decode(block)`` is
    ``shape(decoder.decode(block, raw=True))``, repeated blocks from memory.

    Decoding is a function of the block and the decoder's state (its dynamic table and table
    size), and that state changes only here: a block that left an empty table empty at the
    same size is kept with that size, and taken from the cache while the decoder is still
    there (``_table``: the size while the table is empty, else -1), without decoding: the
    same value, the same state after. With SETTINGS that size the table 0, a peer's repeated
    blocks hit. ``check(block)`` runs before each real decode (a size limit); at most
    ``max_blocks`` blocks of up to ``max_block_bytes`` are kept."""

    def __init__(
        self,
        decoder: Any,
        shape: Callable[[list[tuple[bytes, bytes]]], T],
        *,
        max_blocks: int,
        max_block_bytes: int,
        check: Callable[[bytes], None] | None = None,
    ) -> None:
        self.decoder = decoder
        self.blocks: dict[bytes, tuple[int, T]] = {}
        self._shape = shape
        self._check = check
        self._max_blocks = max_blocks
        self._max_bytes = max_block_bytes
        self._table: int = decoder.header_table.maxsize

    def decode(self, block: bytes) -> T:
        known = self.blocks.get(block)
        if known is not None and known[0] == self._table:
            return known[1]
        if self._check is not None:
            self._check(block)
        before = self._table
        self._table = -1  # unknown until the decoder has finished (it may raise)
        table = self.decoder.header_table
        value = self._shape(self.decoder.decode(block, raw=True))
        after = self._table = -1 if table.dynamic_entries else table.maxsize
        if before == after >= 0 and len(block) <= self._max_bytes:
            if len(self.blocks) >= self._max_blocks:
                self.blocks.clear()
            self.blocks[block] = (after, value)
        return value
