"""JSON request bodies with a bounded nesting depth.

``json.loads`` recurses once per nesting level: 10,000 nested brackets raise
``RecursionError`` (a 500 and a crash in the log) before any model sees the body. ``loads``
measures the depth first, without recursion and at C speed (the strings are blanked out by
one regular expression, then the brackets that are left are peeled pair by pair, at most
``MAX_DEPTH`` passes), and refuses a deeper body with ``InvalidRequest`` (422) naming the
limit. No wire model nests anywhere near ``MAX_DEPTH`` levels (a tensor's ``data`` nests at
most 16, one per dimension).
"""

from __future__ import annotations

import json
import re
from typing import Any

from control_plane.errors import InvalidRequest

MAX_DEPTH = 64
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_BRACKET = re.compile(rb"[^\[\]{}]+")
_PAIR = re.compile(rb"\[\]|\{\}")


def depth_exceeds(body: bytes, limit: int = MAX_DEPTH) -> bool:
    """Whether the JSON text nests arrays/objects deeper than ``limit`` levels (malformed
    text is left for the parser to refuse)."""
    if body.count(b"[") + body.count(b"{") <= limit:  # cannot nest deeper: no regex pass
        return False
    brackets = _NOT_BRACKET.sub(b"", _STRING.sub(b"", body))
    if len(brackets) <= limit:
        return False
    for _ in range(limit):
        brackets, n = _PAIR.subn(b"", brackets)
        if not brackets:
            return False
        if n == 0:  # unbalanced: malformed, and deep when it opens more than the limit
            return brackets.count(b"[") + brackets.count(b"{") > limit
    return bool(brackets)


def loads(body: bytes | str, field: str = "body", what: str = "JSON") -> Any:
    """The JSON value of ``body``; ``InvalidRequest`` on malformed or too deeply nested
    text (never ``RecursionError``)."""
    raw = body.encode("utf-8", "surrogatepass") if isinstance(body, str) else body
    if depth_exceeds(raw):
        raise InvalidRequest(f"{what} nests deeper than {MAX_DEPTH} levels", field=field)
    try:
        return json.loads(raw)
    except RecursionError as exc:  # malformed text the depth check let through
        raise InvalidRequest(f"{what} nests too deeply", field=field) from exc
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidRequest(f"malformed {what}: {exc}", field=field) from exc
