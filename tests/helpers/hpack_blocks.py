"""Hand-made HPACK header blocks (RFC 7541) that change the decoder's dynamic table, and a
differential check: a connection's cached ``_heads.decode`` against a plain ``hpack.Decoder`` fed
the same blocks (grpc_h2's server and the runner's Triton client keep decoded blocks)."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import hpack


def _int(value: int, bits: int, first: int) -> bytes:
    limit = (1 << bits) - 1
    if value < limit:
        return bytes([first | value])
    out = bytearray([first | limit])
    value -= limit
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _string(data: bytes) -> bytes:
    return _int(len(data), 7, 0) + data


def size_update(size: int) -> bytes:
    """Dynamic table size update (§6.3)."""
    return _int(size, 5, 0x20)


def indexed(index: int) -> bytes:
    """Indexed field (§6.1): 62 is the newest dynamic-table entry."""
    return _int(index, 7, 0x80)


def literal(name: bytes, value: bytes, *, index: bool = False) -> bytes:
    """Literal field with a new name, with incremental indexing (§6.2.1) or without (§6.2.2)."""
    return (b"\x40" if index else b"\x00") + _string(name) + _string(value)


# blocks that read or change the dynamic table in every way a peer can
BLOCKS = {
    "pure": literal(b"x-a", b"1") + indexed(2),  # static index + literal: means the same always
    "zero": size_update(0) + literal(b"x-a", b"1"),
    "zero-then-back": size_update(0) + size_update(4096) + literal(b"x-a", b"1"),
    "back": size_update(4096) + literal(b"x-c", b"3"),
    "small": size_update(40) + literal(b"x-d", b"4"),
    "insert-k": literal(b"x-k", b"v1", index=True),
    "insert-b": literal(b"x-b", b"2", index=True),
    "zero-insert-b": size_update(0) + literal(b"x-b", b"2", index=True),
    "newest": indexed(62),  # the newest dynamic entry: an error while the table is empty
    "second": indexed(63),
}

Outcome = tuple[str, Any]


def reference(blocks: list[bytes]) -> list[Outcome]:
    """What a plain decoder gives for each block, up to and including the first error."""
    decoder = hpack.Decoder()
    out: list[Outcome] = []
    for block in blocks:
        try:
            out.append(("ok", [(bytes(k), bytes(v)) for k, v in decoder.decode(block, raw=True)]))
        except hpack.HPACKError as exc:
            out.append(("error", type(exc).__name__))
            break
    return out


def check_against_reference(
    make: Callable[[], Any],
    fields_of: Callable[[Any], dict[bytes, bytes]],
    to_dict: Callable[[list[tuple[bytes, bytes]]], dict[bytes, bytes]],
    *,
    sequences: int = 300,
    length: int = 24,
    seed: int = 7,
) -> int:
    """Random sequences of :data:`BLOCKS` through ``make()._heads.decode`` and a plain decoder: the
    same fields for every block and an error at the same block. The number of blocks the
    connection answered from its cache (so a caller can check the cache was exercised)."""
    rng = random.Random(seed)
    names = sorted(BLOCKS)
    hits = 0
    for _ in range(sequences):
        blocks = [BLOCKS[rng.choice(names)] for _ in range(length)]
        expected = reference(blocks)
        conn = make()
        for block, (kind, value) in zip(blocks, expected, strict=False):
            cached = block in conn._heads.blocks
            if kind == "error":
                try:
                    conn._heads.decode(block)
                except (hpack.HPACKError, ValueError):
                    break
                raise AssertionError(f"{block!r} decoded after {blocks}; a plain decoder fails")
            got = fields_of(conn._heads.decode(block))
            assert got == to_dict(value), (blocks, block)
            hits += cached and got == to_dict(value)
    return hits
