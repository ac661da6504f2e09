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
import logging
import random
import ssl
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from gpufleet import signing
from gpufleet._logs import bind
from gpufleet.channel import Outbox, pack_frame, unpack_frames
from gpufleet.wire import OutputRequest, Tensor
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from runner.backends.base import InferenceEngine, InferError
from runner.identity import Identity
from runner.model_manager import ModelManager
from runner.state import RunnerState, wait_event
from runner.tensors import TensorError

log = logging.getLogger(__name__)

WATCH_INTERVAL_S = 0.2
MAX_FRAME_BYTES = 64 * 1024 * 1024


def channel_url(base_url: str, runner_id: str) -> str:
    """``ws(s)://host/…/v1/runners/{id}/channel`` for a control-plane ``http(s)://`` URL."""
    parts = urlsplit(base_url.rstrip("/"))
    scheme = "wss" if parts.scheme == "https" else "ws"
    return f"{scheme}://{parts.netloc}{parts.path}/v1/runners/{runner_id}/channel"


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
        self._ws: ClientConnection | None = None
        self._ws_runner: str | None = None  # the runner id the open channel authenticated
        self._outbox: Outbox | None = None  # answers to the control plane, coalesced
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
            try:
                async with connect(
                    url,
                    additional_headers=headers,
                    compression=None,
                    max_size=MAX_FRAME_BYTES,
                    open_timeout=10,
                    ping_interval=20,
                    ping_timeout=20,
                    proxy=None,
                    ssl=self._ssl if url.startswith("wss:") else None,
                ) as ws:
                    backoff = 0.5
                    self.connected = True
                    self._ws, self._ws_runner = ws, creds.runner_id
                    self._outbox = Outbox(ws.send, ws.send)
                    log.info("dispatch channel open")
                    await self._serve(ws, stop)
            except asyncio.CancelledError:
                raise
            except InvalidStatus as exc:
                if exc.response.status_code == 401:
                    log.warning("dispatch channel refused (401): re-registering")
                    await self._identity.invalidate(creds)
                    continue
                log.warning("dispatch channel refused: HTTP %s", exc.response.status_code)
            except (OSError, ConnectionClosed, TimeoutError) as exc:
                log.info("dispatch channel closed: %s", exc)
            except Exception:
                log.warning("dispatch channel failed", exc_info=True)
            finally:
                self.connected = False
                self._ws = self._outbox = None
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

    async def _serve(self, ws: ClientConnection, stop: asyncio.Event) -> None:
        advert = self._advert()
        await ws.send(json.dumps({"type": "hello", **advert}))
        # Requests of this connection by the control plane's id (ids restart with it).
        tasks: dict[int, asyncio.Task[None]] = {}
        watcher = asyncio.create_task(self._watch(ws, advert, stop, tasks))
        try:
            async for frame in ws:
                received = time.perf_counter()
                if isinstance(frame, bytes):  # binary: one or more frames back to back
                    for msg, body in unpack_frames(frame):
                        self._on_frame(ws, msg, body, received, tasks)
                else:
                    self._on_frame(ws, json.loads(frame), None, received, tasks)
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
            # The control plane answered these callers 503 when the channel broke: stop
            # spending Triton time and slots on answers nobody can receive.
            for task in list(tasks.values()):
                task.cancel()

    def _on_frame(
        self,
        ws: ClientConnection,
        msg: dict[str, Any],
        body: bytes | None,
        received: float,
        tasks: dict[int, asyncio.Task[None]],
    ) -> None:
        kind = msg.get("type")
        if kind == "reply":
            call = self._calls.pop(int(msg.get("rid", -1)), None)
            if call is not None and not call.done():
                call.set_result(msg)
        elif kind == "infer":
            req_id = int(msg["id"])
            handler = (
                self._handle(msg, received)
                if body is None
                else self._handle_raw(msg, body, received)
            )
            task = asyncio.create_task(handler)
            tasks[req_id] = task
            task.add_done_callback(functools.partial(_forget, tasks, req_id))
        elif kind == "stream":  # a decoupled model's responses, each as it comes
            req_id = int(msg["id"])
            task = asyncio.create_task(self._handle_stream(msg))
            tasks[req_id] = task
            task.add_done_callback(functools.partial(_forget, tasks, req_id))
        elif kind == "wake":
            if self.on_wake is not None:
                self.on_wake()
        elif kind == "cancel":  # also ends a stream: cancelling it cancels the Triton request
            running = tasks.get(int(msg.get("id", -1)))
            if running is not None:
                running.cancel()

    async def _watch(
        self,
        ws: ClientConnection,
        sent: dict[str, Any],
        stop: asyncio.Event,
        tasks: dict[int, asyncio.Task[None]],
    ) -> None:
        """Tell the control plane when the served versions, capacity or draining change;
        close the channel once stopping and idle."""
        while True:
            await wait_event(stop, WATCH_INTERVAL_S)
            advert = self._advert()
            if advert != sent:
                await ws.send(json.dumps({"type": "models", **advert}))
                sent = advert
            if stop.is_set() and not tasks:
                await ws.close()
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
                await ws.send(f'{{"type":"{kind}","rid":{rid},"body":{body}}}')
            except ConnectionClosed as exc:
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
    async def _reply(self, frame: str | bytes) -> None:
        """Answer over the open channel (binary answers of one turn: one message); an answer
        for a channel closed meanwhile is dropped (its caller was answered 503)."""
        outbox = self._outbox
        if outbox is None:
            return
        with contextlib.suppress(ConnectionClosed, ConnectionError):
            await outbox.send(frame)

    async def _handle(self, msg: dict[str, Any], received: float) -> None:
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
        reply["runner_id"] = self._identity.runner_id
        if reply["type"] == "result":
            reply["timings"]["total_ms"] = round((time.perf_counter() - received) * 1000, 3)
        await self._reply(json.dumps(reply, separators=(",", ":")))

    async def _handle_stream(self, msg: dict[str, Any]) -> None:
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
                    await self._reply(json.dumps(chunk, separators=(",", ":")))
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
        reply["runner_id"] = self._identity.runner_id
        await self._reply(json.dumps(reply, separators=(",", ":")))

    async def _handle_raw(self, msg: dict[str, Any], body: bytes, received: float) -> None:
        """A passthrough request: the caller's KServe bytes to Triton as they are, Triton's
        answer bytes back in a binary frame (no tensor is decoded here)."""
        req_id = msg["id"]
        bind(request_id=msg.get("request_id"), model=msg.get("model"))  # this task's lines
        engine = self._engine
        self._state.dispatch_inflight += 1
        frame: str | bytes
        try:
            start = time.perf_counter()
            answer, meta = await engine.infer_raw(  # type: ignore[attr-defined]
                str(msg.get("protocol")),
                msg["model"],
                msg["version"],
                body,
                msg,
                float(msg.get("timeout_s") or 60.0),
            )
            done = time.perf_counter()
            header = {
                "type": "result",
                "id": req_id,
                "runner_id": self._identity.runner_id,
                "timings": {
                    "receive_ms": round((start - received) * 1000, 3),
                    "triton_ms": round((done - start) * 1000, 3),
                    "total_ms": round((done - received) * 1000, 3),
                },
                **meta,
            }
            frame = pack_frame(header, answer)
            self.served += 1
            self.passed_through += 1
        except asyncio.CancelledError:
            raise
        except InferError as exc:
            frame = json.dumps(_error_reply(req_id, exc, self._identity.runner_id))
        except Exception as exc:
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
            self._state.dispatch_inflight -= 1
            self._state.slot_freed.set()
        await self._reply(frame)


def _error_reply(req_id: Any, exc: InferError, runner_id: str | None = None) -> dict[str, Any]:
    """The ``error`` frame of a failed inference: Triton unreachable (or the model gone
    from it) is ``unavailable`` (the caller may retry), a refused request ``invalid_input``."""
    code = "unavailable" if exc.transient else (exc.code or "triton_error")
    reply: dict[str, Any] = {"type": "error", "id": req_id, "code": code}
    reply["message"] = str(exc)[:4000]
    if runner_id is not None:
        reply["runner_id"] = runner_id
    return reply


def _forget(tasks: dict[int, asyncio.Task[None]], req_id: int, task: asyncio.Task[None]) -> None:
    if tasks.get(req_id) is task:
        del tasks[req_id]
