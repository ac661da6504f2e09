"""The KServe v2 HTTP infer call on a short path: a pure ASGI layer in front of the router.

``POST /v2/models/{model}[/versions/{v}]/infer`` is the one call whose cost is paid per
inference, so it skips what every other route goes through (authentication middleware,
exception middleware, the router's match over every route, ``Request`` objects): when

- the bearer token is one the auth service verified before (``cached_principal``: its
  signature checked and its key's state read within ``revocation_check_s``) and grants
  ``jobs:write``,
- and the body may go to a runner untouched (no ``Content-Encoding``, no
  ``Idempotency-Key``, no shared-memory parameters) and a runner connected here passes HTTP
  through (``InferenceService.passthrough``),

the body goes to the runner and Triton's answer bytes come back as they are. Anything else
(the first call of a token, a scope refusal, a compressed body, a replica with no such
runner: the durable path) goes down the ordinary stack with the body already read replayed,
so that answers exactly as before. Errors on the short path are the route's own (``V2Error``
bodies, the statuses of ``kserve_errors``).

The layers outside this one (request id, request timer, body limit, storage budget, the
slow-body guard) still apply: it sits innermost of the app's middleware.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from gpufleet._logs import bind
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from control_plane.api.errors import STATUS_BY_CODE
from control_plane.api.kserve import passthrough_body, v2_error
from control_plane.api.kserve_binary import HEADER_LENGTH
from control_plane.errors import GpufleetError

__all__ = ["KServeFastPath"]

log = logging.getLogger(__name__)

_INFER = re.compile(r"^/v2/models/([^/]+)(?:/versions/([^/]+))?/infer$")
_TEMPLATES = ("/v2/models/{model}/infer", "/v2/models/{model}/versions/{version}/infer")
_HEADER_LENGTH = HEADER_LENGTH.lower().encode()


class _Template:
    """What the request timer reads from ``scope["route"]`` (the route's path template)."""

    __slots__ = ("path",)

    def __init__(self, path: str) -> None:
        self.path = path


_ROUTES = tuple(_Template(t) for t in _TEMPLATES)


class KServeFastPath:
    """See the module docstring. ``app`` is the rest of the stack (authentication, router)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        match = _INFER.match(scope["path"])
        if match is None:
            await self.app(scope, receive, send)
            return
        token = b""
        header_length = content_type = None
        for name, value in scope["headers"]:
            if name == b"authorization":
                token = value
            elif name == _HEADER_LENGTH:
                header_length = value.decode("latin-1")
            elif name == b"content-type":
                content_type = value.decode("latin-1")
            elif name in (b"content-encoding", b"idempotency-key"):
                await self.app(scope, receive, send)  # needs the ordinary route
                return
        scheme, _, bearer = token.decode("latin-1").partition(" ")
        svc = scope["app"].state.services
        p = (
            svc.auth.cached_principal(bearer.strip())
            if scheme.lower() == "bearer" and bearer.strip()
            else None
        )
        if p is None or "jobs:write" not in p.scopes or svc.inference is None:
            await self.app(scope, receive, send)  # first sight of the token, 401, 403
            return
        model, version = match.group(1), match.group(2)
        scope["route"] = _ROUTES[0 if version is None else 1]
        bind(model=model)
        try:
            body = await _read_body(receive)
            if body is None:  # the client went away
                return
            answer = await passthrough_body(
                svc, p, model, version, body, header_length, content_type
            )
        except GpufleetError as exc:  # a body over the limit (413) too
            if STATUS_BY_CODE.get(exc.code, 500) >= 500:
                log.warning("POST %s -> %s: %s", scope["path"], exc.code, exc)
            await v2_error(exc)(scope, receive, send)
            return
        except Exception:
            log.exception("unhandled error on POST %s", scope["path"])
            await v2_error(GpufleetError("internal error"))(scope, receive, send)
            return
        if answer is None:  # not passed through here: the ordinary route, body replayed
            scope.pop("route", None)
            await self.app(scope, _replay(body, receive), send)
            return
        headers = [
            (b"content-type", (answer.meta.get("content_type") or "application/json").encode()),
            (b"content-length", str(len(answer.body)).encode()),
        ]
        length = answer.meta.get("header_length")
        if length is not None:
            headers.append((_HEADER_LENGTH, str(length).encode()))
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": answer.body})


async def _read_body(receive: Receive) -> bytes | None:
    """The whole request body; None when the client disconnected first."""
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    """``receive`` that first hands out the body already read, then the connection's own
    messages (the disconnect)."""
    pending: list[Message] = [{"type": "http.request", "body": body, "more_body": False}]

    async def replayed() -> Message:
        if pending:
            return pending.pop()
        message: Any = await receive()
        return message  # type: ignore[no-any-return]

    return replayed
