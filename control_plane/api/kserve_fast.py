"""The KServe v2 HTTP infer call on a short path, taken by the HTTP listener itself.

``POST /v2/models/{model}[/versions/{v}]/infer`` is the one call whose cost is paid per
inference, so it does not go through the ASGI stack at all (uvicorn's ASGI cycle, the
middleware, Starlette, the router, ``Request`` objects): the listener's protocol
(``http_server.header_timeout``) asks :meth:`KServeFastPath.prepare` about every request
whose headers are complete and, when it says yes, runs :meth:`KServeFastPath.run` in place of
the app. It says yes when

- the bearer token is one the auth service verified before (``cached_principal``: its
  signature checked and its key's state read within ``revocation_check_s``) and grants
  ``jobs:write``,
- and the body may go to a runner untouched (no ``Content-Encoding``, no
  ``Idempotency-Key``).

Then the body goes to a runner connected here that passes HTTP through
(``InferenceService.passthrough``), and Triton's answer bytes come back as they are. Anything
else (the first call of a token, a scope refusal, a compressed body) goes down the ordinary
stack untouched; a body that turns out to need a look inside (shared-memory parameters) or a
replica with no such runner (the durable path) goes down it with the body already read
replayed, so that answers exactly as before.

What the middleware does for every other request is done here too, inline: the request id
(``X-Request-ID``, bound to the log context and sent back), the request-latency metric under
the route's template, the body limit (413), the slow-body guard (408, as ``BodyTimeout``),
the storage budget, ``Strict-Transport-Security`` over TLS when configured, uvicorn's access
line, and uvicorn's proxy-headers rewrite of the client and scheme for a trusted proxy's
``X-Forwarded-For``/``-Proto`` (the middleware's own code, run in place). Errors are the
route's own (``V2Error`` bodies, the statuses of ``kserve_errors``).
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from typing import Any

from gpufleet._logs import bind
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from control_plane.api.kserve import passthrough_body, v2_error_parts
from control_plane.api.kserve_binary import HEADER_LENGTH
from control_plane.api.request_id import HEADER as REQUEST_ID
from control_plane.api.request_id import request_id_of
from control_plane.errors import GpufleetError, PayloadTooLarge, SlowRequest
from control_plane.storage import budget

__all__ = ["KServeFastPath"]

log = logging.getLogger(__name__)

_INFER = re.compile(r"^/v2/models/([^/]+)(?:/versions/([^/]+))?/infer$")
_TEMPLATES = ("/v2/models/{model}/infer", "/v2/models/{model}/versions/{version}/infer")
_HEADER_LENGTH = HEADER_LENGTH.lower().encode()
_ORDINARY = (b"content-encoding", b"idempotency-key")
_FORWARDED = (b"x-forwarded-for", b"x-forwarded-proto")
_UNSAFE_VALUE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")  # as uvicorn refuses in a header value


class _Call:
    """What :meth:`KServeFastPath.prepare` read from one request's head."""

    __slots__ = (
        "content_type",
        "forwarded",
        "header_length",
        "model",
        "principal",
        "request_id",
        "version",
    )

    def __init__(
        self,
        principal: Any,
        model: str,
        version: str | None,
        header_length: str | None,
        content_type: str | None,
        request_id: bytes,
        forwarded: bool,
    ) -> None:
        self.principal = principal
        self.model = model
        self.version = version
        self.header_length = header_length
        self.content_type = content_type
        self.request_id = request_id
        self.forwarded = forwarded  # X-Forwarded-For/-Proto: uvicorn's proxy rewrite applies


class KServeFastPath:
    """See the module docstring. ``app``: the Starlette app (its ``state`` holds the
    services and the metrics); ``hsts``: the ``Strict-Transport-Security`` value to send
    over TLS, if any."""

    def __init__(
        self,
        app: Any,
        *,
        max_body_bytes: int,
        body_idle_s: float,
        body_min_rate: int,
        storage_budget_s: float,
        hsts: bytes | None = None,
    ) -> None:
        self._svc: Any = getattr(app.state, "services", None)  # set before serving
        self._metrics: Any = getattr(app.state, "metrics", None)
        self.max_body_bytes = max_body_bytes
        self.body_idle_s = body_idle_s
        self.body_min_rate = body_min_rate
        self.storage_budget_s = storage_budget_s
        self.hsts = hsts
        self._slow = SlowRequest.message_for(body_idle_s, body_min_rate)
        self._rewrite: tuple[Any, Any] | None = None  # (app, its proxy-headers rewrite)

    # ------------------------------------------------------------------ the decision
    def prepare(self, scope: Scope) -> _Call | None:
        """A call for :meth:`run` when the request takes the short path, else None (the
        ordinary stack answers it). Reads nothing but the request's head."""
        if scope["method"] != "POST":
            return None
        match = _INFER.match(scope["path"])
        if match is None:
            return None
        token = b""
        header_length = content_type = None
        request_id = b""
        forwarded = False
        for name, value in scope["headers"]:  # a repeated header: its first value, as
            if name == b"authorization":  # Starlette's ``headers.get`` reads it
                token = token or value
            elif name == _HEADER_LENGTH:
                header_length = header_length or value.decode("latin-1")
            elif name == b"content-type":
                content_type = content_type or value.decode("latin-1")
            elif name == REQUEST_ID:
                request_id = request_id or value
            elif name in _ORDINARY:
                return None  # needs the ordinary route
            elif name in _FORWARDED:
                forwarded = True
            elif name == b"content-length":
                try:
                    if not 0 <= int(value) <= self.max_body_bytes:
                        return None  # the body limit's own answer (413 / 400)
                except ValueError:
                    return None
        scheme, _, bearer = token.decode("latin-1").partition(" ")
        bearer = bearer.strip()
        if scheme.lower() != "bearer" or not bearer:
            return None
        svc = self._svc
        if svc is None or svc.inference is None:
            return None
        p = svc.auth.cached_principal(bearer)
        if p is None or "jobs:write" not in p.scopes:
            return None  # first sight of the token, 401, 403
        return _Call(
            p,
            match.group(1),
            match.group(2),
            header_length,
            content_type,
            request_id_of(request_id).encode(),
            forwarded,
        )

    # ------------------------------------------------------------------ the call
    async def run(self, cycle: Any, app: ASGIApp, call: _Call) -> None:
        """Answer one request on uvicorn's request cycle ``cycle`` (its ASGI ``receive`` and
        ``send``); ``app``: the ordinary stack, for a body that must go down it. Guarded as
        uvicorn guards an ASGI app: whatever fails answers 500 (or closes the connection
        once the answer has started), a cancellation closes it."""
        start = time.perf_counter()
        rid = call.request_id
        status = 0
        if call.forwarded:
            await self._forwarded(app, cycle.scope)
        try:
            status = await self._answer(cycle, app, call)
        except asyncio.CancelledError:
            if not cycle.response_complete:
                cycle.transport.close()
            raise
        except Exception:
            log.exception("unhandled error on POST %s", cycle.scope["path"])
            if cycle.response_started:
                cycle.transport.close()
                status = 500
            else:
                status = await self._error(cycle, rid, GpufleetError("internal error"))
        finally:
            metrics = self._metrics
            if status and metrics is not None:
                seconds = time.perf_counter() - start
                template = _TEMPLATES[0 if call.version is None else 1]
                metrics.later(metrics.observe_request, template, "POST", str(status), seconds)

    async def _forwarded(self, app: Any, scope: Scope) -> None:
        """What uvicorn's ``ProxyHeadersMiddleware`` (around the app when ``proxy_headers``
        is on, its default) does to a request from a trusted proxy before the app sees it:
        the client address from ``X-Forwarded-For``, the scheme from ``X-Forwarded-Proto``.
        The short path runs in the app's place, so its access line and HSTS see them too.
        The rewrite is the middleware's own, with ``app``'s trusted hosts, around an app
        that does nothing."""
        from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

        if not isinstance(app, ProxyHeadersMiddleware):
            return
        rewrite: Any
        if self._rewrite is not None and self._rewrite[0] is app:
            rewrite = self._rewrite[1]
        else:
            rewrite = ProxyHeadersMiddleware(_rewritten, trusted_hosts=[])  # type: ignore[arg-type]
            rewrite.trusted_hosts = app.trusted_hosts
            self._rewrite = (app, rewrite)
        await rewrite(scope, _nothing_received, _nothing_sent)

    async def _answer(self, cycle: Any, app: ASGIApp, call: _Call) -> int:
        """:meth:`run`'s work; the status to observe (0: none, the client went away or the
        ordinary stack answered)."""
        scope = cycle.scope
        rid = call.request_id
        bind(request_id=rid.decode(), tenant=None, job=None, runner=None, model=call.model)
        scope.setdefault("state", {})["request_id"] = rid.decode()
        budget.start(self.storage_budget_s)
        try:
            body = await self._read_body(cycle)
            if body is None:  # the client went away: nothing to observe
                return 0
            answer = await passthrough_body(
                self._svc,
                call.principal,
                call.model,
                call.version,
                body,
                call.header_length,
                call.content_type,
            )
        except GpufleetError as exc:  # a body over the limit (413) or too slow too
            return await self._error(cycle, rid, exc)
        if answer is None:  # not passed through here: the ordinary route, body replayed
            await cycle.run_asgi(_Replayed(app, body))
            return 0  # the ordinary stack observed it
        ctype = answer.meta.get("content_type") or "application/json"
        length = answer.meta.get("header_length")
        if (
            not isinstance(ctype, str)
            or _UNSAFE_VALUE.search(ctype.encode())
            or not (length is None or type(length) is int)
            or not isinstance(answer.body, bytes)
        ):
            log.warning("runner %s answered unusable framing or body", answer.runner_id)
            return await self._error(cycle, rid, GpufleetError("internal error"))
        headers = [(b"content-type", ctype.encode()), (b"content-length", b"%d" % len(answer.body))]
        if length is not None:
            headers.append((_HEADER_LENGTH, b"%d" % length))
        await self._send(cycle, 200, headers, answer.body, rid)
        return 200

    async def _read_body(self, cycle: Any) -> bytes | None:
        """The whole body; None when the client disconnected first. ``PayloadTooLarge`` over
        the limit, ``SlowRequest`` slower than the slow-body guard allows (each read within
        ``body_idle_s``, the first one too; after that grace ``body_min_rate``)."""
        receive: Receive = cycle.receive
        started = time.monotonic()
        ready = getattr(cycle, "message_event", None)
        if ready is not None and ready.is_set():
            message = await receive()  # the body came with the head: no wait, no timer
        else:
            message = await self._receive_within(receive)
        if message["type"] != "http.request":
            return None
        chunk = message.get("body", b"")
        if not message.get("more_body", False):
            if len(chunk) > self.max_body_bytes:
                raise PayloadTooLarge(f"request body over {self.max_body_bytes} bytes")
            return chunk  # type: ignore[no-any-return]
        chunks = [chunk]
        received = len(chunk)
        while True:
            elapsed = time.monotonic() - started
            if elapsed > self.body_idle_s and received < self.body_min_rate * elapsed:
                raise SlowRequest(self._slow)
            message = await self._receive_within(receive)
            if message["type"] != "http.request":
                return None
            chunk = message.get("body", b"")
            chunks.append(chunk)
            received += len(chunk)
            if received > self.max_body_bytes:
                raise PayloadTooLarge(f"request body over {self.max_body_bytes} bytes")
            if not message.get("more_body", False):
                return b"".join(chunks)

    async def _receive_within(self, receive: Receive) -> Message:
        """The next message, within ``body_idle_s``; else ``SlowRequest``."""
        try:
            async with asyncio.timeout(self.body_idle_s):
                return await receive()
        except TimeoutError:
            raise SlowRequest(self._slow) from None

    async def _error(self, cycle: Any, rid: bytes, exc: GpufleetError) -> int:
        """Answer ``exc`` as the route does (``v2_error``); its status."""
        status, body, extra = v2_error_parts(exc)
        if status >= 500:
            log.warning("POST %s -> %s: %s", cycle.scope["path"], exc.code, exc)
        headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
        for name, value in (extra or {}).items():
            headers.append((name.lower().encode(), value.encode()))
        if isinstance(exc, SlowRequest):  # the rest of the body may still be on its way
            headers.append((b"connection", b"close"))
        if not cycle.response_started:
            await self._send(cycle, status, headers, body, rid)
        return status

    async def _send(
        self, cycle: Any, status: int, headers: list[tuple[bytes, bytes]], body: bytes, rid: bytes
    ) -> None:
        headers.append((REQUEST_ID, rid))
        if self.hsts is not None and cycle.scope.get("scheme") == "https":
            headers.append((b"strict-transport-security", self.hsts))
        if type(cycle) is _LEAN_CYCLE and not cycle.response_started:
            await _write_response(cycle, status, headers, body)
            return
        await cycle.send({"type": "http.response.start", "status": status, "headers": headers})
        await cycle.send({"type": "http.response.body", "body": body})


def _lean_cycle() -> type | None:
    """uvicorn's httptools request cycle when it has what :func:`_write_response` sets (it
    has since 0.13; checked once). Responses on any other cycle (h11's, a future one) go
    through the cycle's ASGI ``send``."""
    try:
        from uvicorn.protocols.http.httptools_impl import RequestResponseCycle
    except ImportError:  # pragma: no cover
        return None
    names = RequestResponseCycle.__init__.__code__.co_names
    wanted: tuple[str, ...] = ("flow", "default_headers", "keep_alive", "message_event")
    wanted += ("on_response", "response_started", "response_complete", "waiting_for_100_continue")
    wanted += ("access_log", "access_logger")
    ok = all(n in names for n in wanted) and hasattr(RequestResponseCycle, "send")
    return RequestResponseCycle if ok else None


async def _rewritten(scope: Scope, receive: Receive, send: Send) -> None:
    return None


async def _nothing_received() -> Message:
    raise RuntimeError("the proxy-headers rewrite reads no message")


async def _nothing_sent(message: Message) -> None:
    raise RuntimeError("the proxy-headers rewrite sends no message")


_LEAN_CYCLE: Any = _lean_cycle()
_CONNECTION_CLOSE = b"connection: close\r\n"


async def _write_response(
    cycle: Any, status: int, headers: list[tuple[bytes, bytes]], body: bytes
) -> None:
    """The whole response (``headers`` hold its Content-Length) in one write, as the cycle's
    ``send`` would write it for a start and one body message: the server's default headers
    first, ``connection: close`` when the connection is not kept alive; then the cycle is
    complete (the next pipelined request starts, the keep-alive timer is armed)."""
    if cycle.flow.write_paused and not cycle.disconnected:
        await cycle.flow.drain()
    if cycle.disconnected:
        return
    cycle.response_started = True
    cycle.waiting_for_100_continue = False
    if cycle.access_log and cycle.access_logger.isEnabledFor(logging.INFO):
        from uvicorn.protocols.utils import get_client_addr, get_path_with_query_string

        scope = cycle.scope
        cycle.access_logger.info(
            '%s - "%s %s HTTP/%s" %d',
            get_client_addr(scope),
            scope["method"],
            get_path_with_query_string(scope),
            scope["http_version"],
            status,
        )
    out = [_STATUS_LINES.get(status) or b"HTTP/1.1 %d \r\n" % status]
    close = not cycle.keep_alive
    for name, value in cycle.default_headers:
        out += (name, b": ", value, b"\r\n")
    for name, value in headers:
        if name == b"connection" and b"close" in value.lower():
            cycle.keep_alive = False
            close = False  # already said
        out += (name, b": ", value, b"\r\n")
    if close:
        out.append(_CONNECTION_CLOSE)
    out += (b"\r\n", body)
    cycle.transport.write(b"".join(out))
    cycle.response_complete = True
    cycle.message_event.set()
    if not cycle.keep_alive:
        cycle.transport.close()
    cycle.on_response()


def _status_lines() -> dict[int, bytes]:
    try:
        from uvicorn.protocols.http.httptools_impl import STATUS_LINE
    except ImportError:  # pragma: no cover
        return {}
    return dict(STATUS_LINE)


_STATUS_LINES = _status_lines()


class _Replayed:
    """``app`` with the body already read handed out first, then the connection's own
    messages (the disconnect)."""

    __slots__ = ("app", "body")

    def __init__(self, app: ASGIApp, body: bytes) -> None:
        self.app = app
        self.body = body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        pending: list[Message] = [{"type": "http.request", "body": self.body, "more_body": False}]

        async def replayed() -> Message:
            if pending:
                return pending.pop()
            message: Any = await receive()
            return message  # type: ignore[no-any-return]

        await self.app(scope, replayed, send)
