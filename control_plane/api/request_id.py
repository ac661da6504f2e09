"""``X-Request-ID``: taken from the request (a client's own, up to 128 safe characters) or
made up, bound to the log context for everything the request does, and sent back on the
response. A pure ASGI middleware: no body buffering, nothing per message."""

from __future__ import annotations

import random
import re

from gpufleet._logs import bind
from starlette.types import ASGIApp, Message, Receive, Scope, Send

HEADER = b"x-request-id"
_SAFE = re.compile(rb"^[A-Za-z0-9._:-]{1,128}$")
# Ids correlate log lines; they guard nothing, so no system call (``secrets``) per request.
_random = random.Random()


def new_request_id() -> str:
    return f"req_{_random.getrandbits(64):016x}"


def request_id_of(given: bytes | str | None) -> str:
    """The client's id when it is safe (1-128 of ``[A-Za-z0-9._:-]``), else a new one."""
    raw = given.encode() if isinstance(given, str) else (given or b"")
    return raw.decode() if _SAFE.fullmatch(raw) else new_request_id()


class RequestIdMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        given = next((v for k, v in scope.get("headers", ()) if k == HEADER), b"")
        rid = given if _SAFE.fullmatch(given) else new_request_id().encode()
        bind(request_id=rid.decode(), tenant=None, job=None, runner=None, model=None)
        scope.setdefault("state", {})["request_id"] = rid.decode()

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", []) if k != HEADER]
                message["headers"] = [*headers, (HEADER, rid)]
            await send(message)

        await self.app(scope, receive, send_with_id)
