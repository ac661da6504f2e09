"""The runner's dispatch channel: a WebSocket to the control plane for synchronous inference.

The runner opens ``/v1/runners/{id}/channel`` (the upgrade request HMAC-signed like every
runner call) and keeps it open. It tells the control plane which model versions are READY
here and how many requests it takes at once (``hello``, then ``models`` whenever that
changes); the control plane sends ``infer`` frames, the runner answers each with ``result``
or ``error`` (same ``id``). Requests run concurrently (Triton's dynamic batcher sees them
together); their count is shared with the job loop's slots (``state.dispatch_inflight``).

Semantics: a request is run at most once; if the channel breaks the control plane answers
the caller 503 and the runner's late answer is dropped. The channel reconnects with backoff;
a 401 at the upgrade (revoked credentials) re-registers through ``Identity``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import json
import json.scanner
import logging
import random
import ssl
import struct
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from gpufleet import signing
from gpufleet._logs import bind
from gpufleet.wire import OutputRequest, Tensor
from websockets.exceptions import InvalidStatus

from runner.backends.base import InferenceEngine, InferError
from runner.identity import Identity
from runner.model_manager import ModelManager
from runner.state import RunnerState, wait_event
from runner.tensors import TensorError
from runner.ws_client import WsConnection, ws_connect

log = logging.getLogger(__name__)

WATCH_INTERVAL_S = 0.2
MAX_FRAME_BYTES = 64 * 1024 * 1024
BATCH_BYTES = 1 << 20  # binary answers of one loop turn share a message up to this size
# A binary frame (gpufleet.channel): the lengths of its JSON header and of its body, two u32.
_LENGTHS = struct.Struct(">II")
# json's own scanner (C): (value, end) of the JSON text at an index, without json.loads's
# wrappers (bytes detection, whitespace regexes).
_scan_json = json.scanner.make_scanner(json.JSONDecoder())  # type: ignore[arg-type]


def channel_url(base_url: str, runner_id: str) -> str:
    """``ws(s)://host/…/v1/runners/{id}/channel`` for a control-plane ``http(s)://`` URL."""
    parts = urlsplit(base_url.rstrip("/"))
    scheme = "wss" if parts.scheme == "https" else "ws"
    return f"{scheme}://{parts.netloc}{parts.path}/v1/runners/{runner_id}/channel"


class _Link:
    """One open channel connection and the requests it brought that are still running
    (by the control plane's id: ids restart with each connection)."""

    __slots__ = ("conn", "tasks")

    def __init__(self) -> None:
        self.conn: WsConnection | None = None
        self.tasks: dict[int, asyncio.Task[None]] = {}


class DispatchChannel:
    """Keeps the channel open and serves its requests; see the module docstring."""

    def __init__(
        self,
        state: RunnerState,
        identity: Identity,
        engine: InferenceEngine,
        models: ModelManager,
        base_url: str,
        ssl_context: ssl.SSLContext | None = None,
        *,
        on_wake: Callable[[], None] | None = None,
    ) -> None:
        self._ssl = ssl_context  # for wss:// (None: the default context)
        self._state = state
        self._identity = identity
        self._engine = engine
        self._models = models
        self._base_url = base_url
        self.connected = False
        self._ws: WsConnection | None = None
        self._ws_runner: str | None = None  # the runner id the open channel authenticated
        self._link = _Link()  # the open connection (or the one being opened) and its requests
        self._runner_json = "null"  # the runner id as JSON, for answer headers
        self._loop_create_task: Callable[..., asyncio.Task[None]] | None = None
        # Calls of the job protocol over the channel (lease, complete) awaiting their reply.
        self._calls: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._call_ids = itertools.count(1)
        self.calls_made = 0
        self.served = 0  # answers, passthrough included
        self.passed_through = 0  # answers to KServe requests passed through untouched
        # Called on a ``wake`` frame (the placement changed): the daemon heartbeats at once.
        self.on_wake = on_wake

    # ------------------------------------------------------------------ connection
    async def run(self, stop: asyncio.Event) -> None:
        """Connect, serve, reconnect with backoff until ``stop``."""
        backoff = 0.5
        while not stop.is_set():
            creds = await self._identity.ensure(stop)
            if creds is None:
                return
            url = channel_url(self._base_url, creds.runner_id)
            headers = signing.sign_headers(
                creds.runner_id, creds.secret, "GET", urlsplit(url).path, "", b""
            )
            link = self._link = _Link()
            self._loop_create_task = None  # taken from the running loop at the first message
            try:
                # Messages are handled as they are parsed (``_on_message``); the first ones,
                # arriving with the upgrade's answer, once ``link.conn`` is set below.
                conn = await ws_connect(
                    url,
                    self._on_message,
                    additional_headers=headers,
                    max_size=MAX_FRAME_BYTES,
                    open_timeout=10,
                    ping_interval=20,
                    ping_timeout=20,
                    ssl=self._ssl if url.startswith("wss:") else None,
                    batch_bytes=BATCH_BYTES,
                )
                link.conn = conn
                try:
                    backoff = 0.5
                    self.connected = True
                    self._ws, self._ws_runner = conn, creds.runner_id
                    self._runner_json = json.dumps(creds.runner_id)
                    log.info("dispatch channel open")
                    closed = await self._serve(link, stop)
                    log.info("dispatch channel closed: %s", closed)
                finally:
                    self._ws = None
                    await conn.close()
            except asyncio.CancelledError:
                raise
            except InvalidStatus as exc:
                if exc.response.status_code == 401:
                    log.warning("dispatch channel refused (401): re-registering")
                    await self._identity.invalidate(creds)
                    continue
                log.warning("dispatch channel refused: HTTP %s", exc.response.status_code)
            except (OSError, TimeoutError) as exc:
                log.info("dispatch channel closed: %s", exc)
            except Exception:
                log.warning("dispatch channel failed", exc_info=True)
            finally:
                self.connected = False
                self._ws = None
                self._fail_calls()
            await wait_event(stop, backoff * (0.5 + random.random()))
            backoff = min(backoff * 2, 5.0)

    def _advert(self) -> dict[str, Any]:
        cfg = self._state.config
        ready = self._state.triton_ready.is_set()
        refs = self._models.ready_refs() if ready else []
        return {
            "models": sorted(
                ({"name": r.name, "version": r.version} for r in refs),
                key=lambda m: (m["name"], m["version"]),
            ),
            "raw": sorted(getattr(self._engine, "raw_protocols", ())),
            # Slots the job loop's leased jobs hold are not offered (one limit for both).
            "capacity": max(1, cfg.max_concurrency - len(self._state.inflight)),
            "draining": bool(cfg.drain or self._state.stopping),
        }

    async def _serve(self, link: _Link, stop: asyncio.Event) -> Exception:
        """Until the connection closes; how it closed."""
        conn = link.conn
        assert conn is not None
        advert = self._advert()
        conn.send(json.dumps({"type": "hello", **advert}))
        watcher = asyncio.create_task(self._watch(link, advert, stop))
        try:
            return await conn.wait_closed()
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
            # The control plane answered these callers 503 when the channel broke: stop
            # spending Triton time and slots on answers nobody can receive.
            for task in list(link.tasks.values()):
                task.cancel()

    def _on_message(self, data: bytes | str) -> None:
        """A message of the open channel, as soon as it is read (a failure here fails the
        channel: the control plane answers its requests 503, the runner reconnects)."""
        received = time.perf_counter()
        if self._loop_create_task is None:
            self._loop_create_task = asyncio.get_running_loop().create_task
        link = self._link
        if isinstance(data, str):
            self._on_frame(link, json.loads(data), None, received)
            return
        # binary: one or more frames back to back (gpufleet.channel's layout)
        at, size = 0, len(data)
        while at < size:
            if size - at < 8:
                raise ValueError("binary frame shorter than its length prefix")
            head_len, body_len = _LENGTHS.unpack_from(data, at)
            head_end = at + 8 + head_len
            end = head_end + body_len
            if end > size:
                raise ValueError("binary frame runs past the message")
            head = data[at + 8 : head_end].decode()
            try:
                msg, parsed = _scan_json(head, 0)  # json.loads, less its layers of calls
            except StopIteration:
                parsed = -1
            if parsed != len(head):  # not (only) JSON: json.loads raises its usual error
                msg = json.loads(head)
            if not isinstance(msg, dict):
                raise ValueError("binary frame header is not a JSON object")
            if msg.get("type") == "infer":  # the hot path: a passthrough request
                req_id = int(msg["id"])
                link.tasks[req_id] = self._loop_create_task(
                    self._handle_raw(link, msg, data[head_end:end], received)
                )
            else:
                self._on_frame(link, msg, data[head_end:end], received)
            at = end

    def _on_frame(
        self, link: _Link, msg: dict[str, Any], body: bytes | None, received: float
    ) -> None:
        kind = msg.get("type")
        if kind == "infer":
            req_id = int(msg["id"])
            handler = (
                self._handle(link, msg, received)
                if body is None
                else self._handle_raw(link, msg, body, received)
            )
            link.tasks[req_id] = asyncio.create_task(handler)  # the handler removes it
        elif kind == "reply":
            call = self._calls.pop(int(msg.get("rid", -1)), None)
            if call is not None and not call.done():
                call.set_result(msg)
        elif kind == "stream":  # a decoupled model's responses, each as it comes
            req_id = int(msg["id"])
            link.tasks[req_id] = asyncio.create_task(self._handle_stream(link, msg))
        elif kind == "wake":
            if self.on_wake is not None:
                self.on_wake()
        elif kind == "cancel":  # also ends a stream: cancelling it cancels the Triton request
            running = link.tasks.pop(int(msg.get("id", -1)), None)
            if running is not None:
                running.cancel()

    async def _watch(self, link: _Link, sent: dict[str, Any], stop: asyncio.Event) -> None:
        """Tell the control plane when the served versions, capacity or draining change;
        close the channel once stopping and idle."""
        conn = link.conn
        assert conn is not None
        while True:
            await wait_event(stop, WATCH_INTERVAL_S)
            advert = self._advert()
            if advert != sent:
                conn.send(json.dumps({"type": "models", **advert}))
                sent = advert
            if stop.is_set() and not link.tasks:
                await conn.close()
                return

    # ------------------------------------------------------------------ job protocol
    def can_call(self, runner_id: str) -> bool:
        """The channel is open under ``runner_id``: the job protocol of that runner may go
        over it (a channel opened under credentials since replaced may not)."""
        return self._ws is not None and self._ws_runner == runner_id

    async def call(self, kind: str, body: str, timeout_s: float) -> dict[str, Any]:
        """One call of the job protocol (``lease``, ``complete``) over the open channel:
        ``body`` is the JSON the HTTP route takes; returns the ``reply`` frame (``status``
        and ``body`` or ``error``, as the route would answer). Raises ConnectionError when
        the channel is not open or closes before the reply, TimeoutError after
        ``timeout_s``: the caller then does what it does when an HTTP call fails."""
        ws = self._ws
        if ws is None:
            raise ConnectionError("the channel is not open")
        rid = next(self._call_ids)
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._calls[rid] = fut
        try:
            try:
                ws.send(f'{{"type":"{kind}","rid":{rid},"body":{body}}}')
            except ConnectionError as exc:
                raise ConnectionError(f"channel closed: {exc}") from exc
            self.calls_made += 1
            async with asyncio.timeout(timeout_s):
                return await fut
        finally:
            self._calls.pop(rid, None)

    def _fail_calls(self) -> None:
        calls, self._calls = self._calls, {}
        for fut in calls.values():
            if not fut.done():
                fut.set_exception(ConnectionError("the channel closed before the reply"))

    # ------------------------------------------------------------------ requests
    @staticmethod
    async def _reply(link: _Link, frame: str | bytes) -> None:
        """Answer on the connection the request came by (binary answers of one loop turn:
        one message); an answer for a connection closed meanwhile is dropped (its caller
        was answered 503)."""
        conn = link.conn
        if conn is None or not conn.open:
            return
        conn.send(frame)
        if conn.writing_paused:  # the control plane reads slower than we answer
            with contextlib.suppress(ConnectionError):
                await conn.drain()

    async def _handle(self, link: _Link, msg: dict[str, Any], received: float) -> None:
        req_id = msg["id"]
        bind(request_id=msg.get("request_id"), model=msg.get("model"))  # this task's lines
        self._state.dispatch_inflight += 1
        reply: dict[str, Any]
        try:
            # The control plane validated these against the model's config already:
            # construct without validating again (the engine still checks sizes).
            inputs = [Tensor.model_construct(**t) for t in msg.get("inputs") or []]
            outputs = [OutputRequest.model_construct(**o) for o in msg.get("outputs") or []]
            start = time.perf_counter()
            result = await self._engine.infer(
                msg["model"],
                msg["version"],
                inputs,
                outputs or None,
                msg.get("parameters") or {},
                float(msg.get("timeout_s") or 60.0),
            )
            done = time.perf_counter()
            reply = {
                "type": "result",
                "id": req_id,
                "outputs": [
                    {"name": t.name, "datatype": t.datatype, "shape": t.shape, "data": t.data}
                    for t in result
                ],
                "timings": {
                    "receive_ms": round((start - received) * 1000, 3),
                    "triton_ms": round((done - start) * 1000, 3),
                },
            }
            self.served += 1
        except asyncio.CancelledError:
            raise
        except (TensorError, ValueError) as exc:
            reply = {"type": "error", "id": req_id, "code": "invalid_input", "message": str(exc)}
        except InferError as exc:
            reply = _error_reply(req_id, exc)
        except Exception as exc:
            log.warning("dispatched request %s failed", req_id, exc_info=True)
            reply = {"type": "error", "id": req_id, "code": "runner_error", "message": str(exc)}
        finally:
            self._state.dispatch_inflight -= 1
            self._state.slot_freed.set()
            link.tasks.pop(int(req_id), None)
        reply["runner_id"] = self._identity.runner_id
        if reply["type"] == "result":
            reply["timings"]["total_ms"] = round((time.perf_counter() - received) * 1000, 3)
        await self._reply(link, json.dumps(reply, separators=(",", ":")))

    async def _handle_stream(self, link: _Link, msg: dict[str, Any]) -> None:
        """A ``stream`` request: a ``chunk`` frame per response of the model, then ``result``
        (or ``error``). Cancelled by a ``cancel`` frame or a closed channel."""
        req_id = msg["id"]
        self._state.dispatch_inflight += 1
        reply: dict[str, Any]
        try:
            stream_fn = getattr(self._engine, "infer_stream", None)
            if stream_fn is None:
                raise InferError("this runner's backend does not stream", code="unsupported")
            inputs = [Tensor.model_construct(**t) for t in msg.get("inputs") or []]
            outputs = [OutputRequest.model_construct(**o) for o in msg.get("outputs") or []]
            stream = stream_fn(
                msg["model"],
                msg["version"],
                inputs,
                outputs or None,
                msg.get("parameters") or {},
                float(msg.get("timeout_s") or 60.0),
            )
            count = 0
            async with contextlib.aclosing(stream) as responses:
                async for result in responses:
                    chunk = {
                        "type": "chunk",
                        "id": req_id,
                        "outputs": [
                            {
                                "name": t.name,
                                "datatype": t.datatype,
                                "shape": t.shape,
                                "data": t.data,
                            }
                            for t in result
                        ],
                    }
                    await self._reply(link, json.dumps(chunk, separators=(",", ":")))
                    count += 1
            reply = {"type": "result", "id": req_id, "outputs": [], "responses": count}
            self.served += 1
        except asyncio.CancelledError:
            log.info("streamed request %s cancelled", req_id)
            raise
        except (TensorError, ValueError) as exc:
            reply = {"type": "error", "id": req_id, "code": "invalid_input", "message": str(exc)}
        except InferError as exc:
            reply = _error_reply(req_id, exc)
        except Exception as exc:
            log.warning("streamed request %s failed", req_id, exc_info=True)
            reply = {"type": "error", "id": req_id, "code": "runner_error", "message": str(exc)}
        finally:
            self._state.dispatch_inflight -= 1
            self._state.slot_freed.set()
            link.tasks.pop(int(req_id), None)
        reply["runner_id"] = self._identity.runner_id
        await self._reply(link, json.dumps(reply, separators=(",", ":")))

    async def _handle_raw(
        self, link: _Link, msg: dict[str, Any], body: bytes, received: float
    ) -> None:
        """A passthrough request: the caller's KServe bytes to Triton as they are, Triton's
        answer bytes back in a binary frame (no tensor is decoded here)."""
        req_id = msg["id"]
        state = self._state
        state.dispatch_inflight += 1
        frame: str | bytes
        try:
            start = time.perf_counter()
            answer, meta = await self._engine.infer_raw(  # type: ignore[attr-defined]
                msg.get("protocol"),
                msg["model"],
                msg["version"],
                body,
                msg,
                float(msg.get("timeout_s") or 60.0),
            )
            done = time.perf_counter()
            # gpufleet.channel's binary frame, its JSON header written out directly
            head = (
                f'{{"type":"result","id":{req_id if type(req_id) is int else json.dumps(req_id)},'
                f'"runner_id":{self._runner_json},'
                f'"timings":{{"receive_ms":{(start - received) * 1000:.3f},'
                f'"triton_ms":{(done - start) * 1000:.3f},'
                f'"total_ms":{(done - received) * 1000:.3f}}}'
                f"{_json_members(meta) if meta else ''}}}"
            ).encode()
            frame = b"".join((_LENGTHS.pack(len(head), len(answer)), head, answer))
            self.served += 1
            self.passed_through += 1
        except asyncio.CancelledError:
            raise
        except InferError as exc:
            frame = json.dumps(_error_reply(req_id, exc, self._identity.runner_id))
        except Exception as exc:
            bind(request_id=msg.get("request_id"), model=msg.get("model"))
            log.warning("passthrough request %s failed", req_id, exc_info=True)
            frame = json.dumps(
                {
                    "type": "error",
                    "id": req_id,
                    "code": "runner_error",
                    "message": str(exc),
                    "runner_id": self._identity.runner_id,
                }
            )
        finally:
            state.dispatch_inflight -= 1
            state.slot_freed.set()
            link.tasks.pop(req_id, None)
        conn = link.conn
        if conn is not None and conn.open:  # else: closed meanwhile, its caller answered 503
            # the only request in flight: no other answer can share the write, send it now
            conn.send(frame, now=not link.tasks)
            if conn.writing_paused:  # the control plane reads slower than we answer
                with contextlib.suppress(ConnectionError):
                    await conn.drain()


def _json_members(meta: dict[str, Any]) -> str:
    """``meta``'s members as they continue a JSON object (``,"a":1``), or nothing."""
    if not meta:
        return ""
    out = []
    for key, value in meta.items():
        if type(value) is int:
            out.append(f',"{key}":{value}')
        else:
            out.append(f',"{key}":{_json_str(value)}')
    return "".join(out)


@functools.lru_cache(maxsize=64)
def _json_str(value: Any) -> str:
    """A header value (``content_type``: a few in use) as JSON, cached."""
    return json.dumps(value)


def _error_reply(req_id: Any, exc: InferError, runner_id: str | None = None) -> dict[str, Any]:
    """The ``error`` frame of a failed inference: Triton unreachable (or the model gone
    from it) is ``unavailable`` (the caller may retry), a refused request ``invalid_input``."""
    code = "unavailable" if exc.transient else (exc.code or "triton_error")
    reply: dict[str, Any] = {"type": "error", "id": req_id, "code": code}
    reply["message"] = str(exc)[:4000]
    if runner_id is not None:
        reply["runner_id"] = runner_id
    return reply
