"""Names, paths and keys a client gives: no control or bidi characters
(``gpufleet.textcheck`` says which and why)."""

from __future__ import annotations

from gpufleet.textcheck import describe, first_unsafe

from control_plane.errors import InvalidRequest


def check_text(text: str, what: str, field: str) -> None:
    """``InvalidRequest`` naming ``field`` and the character when ``text`` holds one."""
    i = first_unsafe(text)
    if i is not None:
        raise InvalidRequest(f"{what} holds a {describe(text, i)}", field=field)
