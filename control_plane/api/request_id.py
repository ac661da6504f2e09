"""``X-Request-ID``: taken from the request (a client's own, up to 128 safe characters) or
made up, bound to the log context for everything the request does, and sent back on the
response (by the API's middleware layer, ``gate.ApiGate``, and the KServe short path)."""

from __future__ import annotations

import random
import re

HEADER = b"x-request-id"
SAFE_REQUEST_ID = re.compile(rb"^[A-Za-z0-9._:-]{1,128}$")
# Ids correlate log lines; they guard nothing, so no system call (``secrets``) per request.
_random = random.Random()


def new_request_id() -> str:
    return f"req_{_random.getrandbits(64):016x}"


def request_id_of(given: bytes | str | None) -> str:
    """The client's id when it is safe (1-128 of ``[A-Za-z0-9._:-]``), else a new one."""
    raw = given.encode() if isinstance(given, str) else (given or b"")
    return raw.decode() if SAFE_REQUEST_ID.fullmatch(raw) else new_request_id()
