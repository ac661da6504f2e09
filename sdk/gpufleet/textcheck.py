"""Characters that never belong in a name, a label, a path or a key.

Control characters (C0, DEL, C1), format characters (bidi overrides and isolates such as
U+202E, zero-width characters, the BOM), line/paragraph separators and lone surrogates make
text print differently from what it is: a log line, a file listing or a console page would
show one thing and mean another. Shared by the wire models and the control plane.
"""

from __future__ import annotations

import unicodedata

# Cc: controls, Cf: format (bidi, zero width), Cs: surrogates, Zl/Zp: line/paragraph seps
UNSAFE_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})


def first_unsafe(text: str) -> int | None:
    """Index of the first unsafe character of ``text``, or None."""
    if text.isascii():  # the common case: only C0 and DEL can be unsafe
        for i, c in enumerate(text):
            if c < " " or c == "\x7f":
                return i
        return None
    for i, c in enumerate(text):
        if unicodedata.category(c) in UNSAFE_CATEGORIES:
            return i
    return None


def describe(text: str, index: int) -> str:
    """``control or bidi character U+202E at 3``."""
    return f"control or bidi character U+{ord(text[index]):04X} at {index}"


def safe_text(text: str) -> str:
    """``text`` unchanged; ``ValueError`` (a pydantic validation error) when it holds an
    unsafe character."""
    i = first_unsafe(text)
    if i is not None:
        raise ValueError(f"holds a {describe(text, i)}")
    return text
