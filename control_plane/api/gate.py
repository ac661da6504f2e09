"""The API's middleware as one ASGI layer (:class:`ApiGate`), and the app class that builds
its stack around it (:class:`ApiApp`).

Every request used to pass seven middleware objects, each a coroutine of its own (its frame
resumed at every suspension of the request), most wrapping ``send`` or ``receive`` in a
closure of their own. What they did, in the same order, is done here in one coroutine with
one ``send`` wrapper:

1. Starlette's ``ServerErrorMiddleware`` (HTTP): an exception nothing handled is answered
   with the app's ``Exception`` handler (500) unless the response started, sent without the
   wrappers below (so without ``X-Request-ID``), then raised again for the server to log;
2. the request id (``request_id.py``, HTTP and WebSocket): bound to the log context, stored
   in ``scope["state"]``, sent back on the response;
3. the request-latency metric by route template, method and status (``metrics.py``);
4. the body limit (``limits.py``): a declared ``Content-Length`` over the limit (or a bad
   one) is answered 413 (422) at once, and the body read that crosses it raises
   ``PayloadTooLarge``;
5. the storage-time budget of the request (``storage/budget.py``);
6. bearer authentication (``security.BearerBackend``, HTTP and WebSocket): ``scope["auth"]``
   and ``scope["user"]``; a token answered from memory costs no coroutine;
7. Starlette's ``ExceptionMiddleware``: the app's exception handlers (by exception class,
   and by status for ``HTTPException``) for what the router and the routes raise
   (:func:`handle_exception`, also used by ``spec.DocumentedRoute``'s endpoints).

An exception raised in steps 2-6 (e.g. a storage failure while a token is verified) reaches
step 1 as before, not the handlers of step 7. Middleware added with ``add_middleware`` wraps
this layer.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from gpufleet._logs import bind
from starlette._utils import is_async_callable
from starlette.applications import Starlette
from starlette.authentication import AuthenticationError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException, WebSocketException
from starlette.middleware.errors import ServerErrorMiddleware
from starlette.middleware.exceptions import ExceptionMiddleware
from starlette.requests import HTTPConnection, Request
from starlette.responses import PlainTextResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from starlette.websockets import WebSocket

from control_plane.api.limits import refusal
from control_plane.api.request_id import HEADER as REQUEST_ID
from control_plane.api.request_id import SAFE_REQUEST_ID, new_request_id
from control_plane.api.security import BearerBackend
from control_plane.errors import PayloadTooLarge
from control_plane.metrics import Metrics, template_of
from control_plane.storage.budget import VAR as BUDGET
from control_plane.storage.budget import Budget

__all__ = ["ApiApp", "ApiGate", "GateConfig", "handle_exception"]

Handlers = tuple[dict[Any, Any], dict[int, Any]]
_AUTHORIZATION = b"authorization"
_CONTENT_LENGTH = b"content-length"
_perf_counter = time.perf_counter


@dataclass(frozen=True)
class GateConfig:
    """What the layer needs besides the app's exception handlers."""

    metrics: Metrics
    routes: Callable[[], list[Any]]  # the route table, for the template of unrouted requests
    backend: BearerBackend
    max_body_bytes: int
    storage_budget_s: float
    exempt: tuple[str, ...] = ()  # paths without the body limit (they have their own)


async def handle_exception(
    conn: Request | WebSocket,
    exc: Exception,
    scope: Scope,
    receive: Receive,
    send: Send,
    started: bool,
) -> None:
    """Answer ``exc`` with the app's handler for it, as Starlette's exception wrapper does
    (``starlette._exception_handler``): raise it again when there is none, and raise
    ``RuntimeError`` when the response had already started (``started``)."""
    handlers: Handlers = scope.get("starlette.exception_handlers") or ({}, {})
    by_class, by_status = handlers
    handler = by_status.get(exc.status_code) if isinstance(exc, HTTPException) else None
    if handler is None:
        for cls in type(exc).__mro__:
            if cls in by_class:
                handler = by_class[cls]
                break
    if handler is None:
        raise exc
    if started:
        raise RuntimeError("Caught handled exception, but response already started.") from exc
    if is_async_callable(handler):
        response = await handler(conn, exc)
    else:
        response = await run_in_threadpool(handler, conn, exc)
    if response is not None:
        await response(scope, receive, send)
    exc.__traceback__ = None  # a reused exception instance would keep every traceback


class ApiGate:
    """See the module docstring. ``handlers``: the exception handlers of step 7 (classes or
    status codes); ``server_error``: the ``Exception`` handler of step 1."""

    def __init__(
        self,
        app: ASGIApp,
        config: GateConfig,
        handlers: Mapping[Any, Any],
        server_error: Any = None,
        debug: bool = False,
    ) -> None:
        self.app = app
        self.config = config
        self._metrics = config.metrics
        self._backend = config.backend
        self._max_bytes = config.max_body_bytes
        self._exempt = config.exempt
        self._limit_s = config.storage_budget_s
        # Starlette's own defaults first (HTTPException, WebSocketException), then the app's
        defaults = ExceptionMiddleware(app, debug=debug)
        by_class: dict[Any, Any] = {
            HTTPException: defaults.http_exception,
            WebSocketException: defaults.websocket_exception,
        }
        by_status: dict[int, Any] = {}
        for key, value in handlers.items():
            if isinstance(key, int):
                by_status[key] = value
            else:
                by_class[key] = value
        self._handlers: Handlers = (by_class, by_status)
        self._server_error = ServerErrorMiddleware(app, handler=server_error, debug=debug)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind != "http":
            if kind == "websocket":
                await self._websocket(scope, receive, send)
            else:  # lifespan
                await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        limited = not (self._exempt and path.startswith(self._exempt))
        given = authorization = None
        declared = 0  # the first bad Content-Length (step 4), 0: none
        for name, value in scope["headers"]:  # a repeated header: its first value
            if name == REQUEST_ID:
                if given is None:
                    given = value
            elif name == _AUTHORIZATION:
                if authorization is None:
                    authorization = value
            elif name == _CONTENT_LENGTH and limited and not declared:
                try:
                    length = int(value)
                except ValueError:
                    length = -1
                if length > self._max_bytes or length < 0:
                    declared = length
        # 2. the request id
        rid = given if given is not None and SAFE_REQUEST_ID.fullmatch(given) else None
        if rid is None:
            rid = new_request_id().encode()
        rid_text = rid.decode()
        bind(request_id=rid_text, tenant=None, job=None, runner=None, model=None)
        scope.setdefault("state", {})["request_id"] = rid_text
        # 3. the metric, and 1.'s "has the response started" (the status sent, 0: none)
        status = 0

        async def send_http(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                headers = message.get("headers", [])
                for name, _ in headers:
                    if name == REQUEST_ID:
                        headers = [(k, v) for k, v in headers if k != REQUEST_ID]
                        break
                message["headers"] = [*headers, (REQUEST_ID, rid)]
            await send(message)

        started = _perf_counter()
        try:
            try:
                if declared:  # 4. refused before anything is read
                    await refusal(path, declared, self._max_bytes)(scope, receive, send_http)
                    return
                app_receive = receive
                if limited:
                    seen = 0
                    max_bytes = self._max_bytes

                    async def limited_receive() -> Message:
                        nonlocal seen
                        message = await receive()
                        if message["type"] == "http.request":
                            seen += len(message.get("body", b""))
                            if seen > max_bytes:
                                raise PayloadTooLarge(f"request body over {max_bytes} bytes")
                        return message

                    app_receive = limited_receive
                token = BUDGET.set(Budget(self._limit_s))  # 5.
                try:
                    # 6.
                    try:
                        scope["auth"], scope["user"] = await self._auth(scope, authorization)
                    except AuthenticationError as exc:  # (as AuthenticationMiddleware)
                        await PlainTextResponse(str(exc), 400)(scope, app_receive, send_http)
                        return
                    # 7.
                    scope["starlette.exception_handlers"] = self._handlers
                    try:
                        await self.app(scope, app_receive, send_http)
                    except Exception as exc:
                        conn = Request(scope, app_receive, send_http)
                        await handle_exception(
                            conn, exc, scope, app_receive, send_http, status != 0
                        )
                finally:
                    BUDGET.reset(token)
            finally:
                # The router leaves the matched route in the scope; match by hand only for
                # requests it did not route (404s, answers of this layer).
                template = getattr(scope.get("route"), "path", None) or template_of(
                    self.config.routes(), scope
                )
                metrics = self._metrics
                seconds = _perf_counter() - started
                observed = str(status or 500)
                metrics.later(metrics.observe_request, template, scope["method"], observed, seconds)
        except Exception as exc:  # 1.
            response = await self._error_response(Request(scope), exc)
            if not status:
                await response(scope, receive, send)
            raise

    async def _auth(self, scope: Scope, authorization: bytes | None) -> Any:
        """Step 6: the (credentials, user) pair for the request's first ``Authorization``
        value, from memory when the backend can tell without I/O; ``AuthenticationError``
        as the backend raises it."""
        header = None if authorization is None else authorization.decode("latin-1")
        auth = self._backend.from_memory(scope, header)
        if auth is None:
            auth = await self._backend.authenticate(HTTPConnection(scope))
        return auth

    async def _error_response(self, request: Request, exc: Exception) -> Any:
        """``ServerErrorMiddleware``'s answer to an exception nothing handled."""
        errors = self._server_error
        handler: Any = errors.handler
        if errors.debug:
            return await run_in_threadpool(errors.debug_response, request, exc)
        if handler is None:
            return errors.error_response(request, exc)
        if is_async_callable(handler):
            return await handler(request, exc)
        return await run_in_threadpool(handler, request, exc)

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Steps 2, 6 and 7 (the others are for HTTP requests only)."""
        given = authorization = None
        for name, value in scope["headers"]:
            if name == REQUEST_ID:
                if given is None:
                    given = value
            elif name == _AUTHORIZATION and authorization is None:
                authorization = value
        rid = given if given is not None and SAFE_REQUEST_ID.fullmatch(given) else None
        rid_text = new_request_id() if rid is None else rid.decode()
        bind(request_id=rid_text, tenant=None, job=None, runner=None, model=None)
        scope.setdefault("state", {})["request_id"] = rid_text
        try:
            scope["auth"], scope["user"] = await self._auth(scope, authorization)
        except AuthenticationError:
            await send({"type": "websocket.close", "code": 1000})
            return
        scope["starlette.exception_handlers"] = self._handlers
        try:
            await self.app(scope, receive, send)
        except Exception as exc:
            conn = WebSocket(scope, receive, send)
            await handle_exception(conn, exc, scope, receive, send, False)


class ApiApp(Starlette):
    """A Starlette app whose middleware is one :class:`ApiGate` (``gate``) around the
    router, in place of Starlette's ``ServerErrorMiddleware`` and ``ExceptionMiddleware`` and
    the middleware the gate does the work of."""

    def __init__(self, *, gate: GateConfig, **kw: Any) -> None:
        super().__init__(**kw)
        self.gate = gate

    def build_middleware_stack(self) -> ASGIApp:
        server_error = None
        handlers: dict[Any, Any] = {}
        for key, value in self.exception_handlers.items():  # as Starlette splits them
            if key in (500, Exception):
                server_error = value
            else:
                handlers[key] = value
        app: ASGIApp = ApiGate(
            self.router.middleware_stack, self.gate, handlers, server_error, self.debug
        )
        for cls, args, kwargs in reversed(self.user_middleware):
            app = cls(app, *args, **kwargs)
        return app
