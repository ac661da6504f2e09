"""The runner channel: ``GET /v1/runners/{runner_id}/channel`` upgraded to a WebSocket.

The upgrade request is HMAC-signed like every runner call (empty body); a bad signature is
refused with 401 before the upgrade. Frames (JSON text, binary for passthrough requests) are
documented in ``gpufleet.channel``. Besides synchronous inference the channel carries the
runner's job protocol (``lease``/``complete`` frames, answered with ``reply``) through the
same functions as the signed HTTP routes (``job_protocol.py``).

The channel lives as long as the connection; the dispatcher fails its requests in flight when
it closes. A revoked runner's channel is closed at the next revocation check
(``channel_recheck_s``).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from gpufleet.channel import Outbox, unpack_frames
from gpufleet.wire import (
    BatchCompleteRequest,
    BatchCompleteResponse,
    ChunksRequest,
    ChunksResponse,
    LeaseRequest,
    LeaseResponse,
)
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.responses import JSONResponse
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from control_plane.api.channel_direct import EXTENSION, DirectLink, FrameBatcher
from control_plane.api.context import Services
from control_plane.api.errors import STATUS_BY_CODE, validation_details
from control_plane.api.job_protocol import append_chunks, complete_jobs, lease_jobs
from control_plane.errors import GpufleetError, InvalidRequest, Unauthorized
from control_plane.services.dispatch import Channel, Dispatcher
from control_plane.services.runners import MOCK_REFUSED, is_mock
from control_plane.storage.protocols_auth import RunnerRecord

log = logging.getLogger(__name__)

CLOSE_REVOKED = 4401
# ``json.loads`` of a text frame without its call around the decoder (its own BOM check
# aside: a text starting with one fails to parse here as well, a ValueError either way)
_decode = json.JSONDecoder().decode
RECORD_FRESH_S = 1.0  # how stale the runner's record (drain, revocation) may be for a lease


async def _authenticate(ws: WebSocket, svc: Services) -> RunnerRecord | None:
    runner_id = ws.path_params["runner_id"]
    try:
        rec = await run_in_threadpool(
            svc.runners.authenticate, runner_id, "GET", ws.url.path, ws.url.query, ws.headers, b""
        )
    except Unauthorized as exc:
        body = {"error": {"code": "unauthorized", "message": exc.message}, "api_version": "v1"}
        if "websocket.http.response" in ws.scope.get("extensions", {}):
            await ws.send_denial_response(JSONResponse(body, status_code=401))
        else:
            await ws.close(code=1008, reason=exc.message[:120])
        return None
    return rec


class _Runner:
    """The channel's runner record, re-read at most every ``fresh_s`` for the job protocol
    (its config says whether it drains) and every ``channel_recheck_s`` for revocation."""

    def __init__(self, svc: Services, rec: RunnerRecord, fresh_s: float = RECORD_FRESH_S):
        self._svc = svc
        self.rec = rec
        self._read_at = time.monotonic()
        self._fresh_s = fresh_s

    async def current(self) -> RunnerRecord | None:
        """The record, re-read when older than ``fresh_s``; None once revoked or deleted."""
        if time.monotonic() - self._read_at > self._fresh_s:
            rec = await run_in_threadpool(self._svc.runners.find, self.rec.id)
            self._read_at = time.monotonic()
            if rec is None or rec.revoked:
                return None
            self.rec = rec
        return None if self.rec.revoked else self.rec


async def _recheck(ws: WebSocket, runner: _Runner, every_s: float) -> None:
    """Close the channel once the runner is revoked."""
    while True:
        await asyncio.sleep(every_s)
        try:
            rec = await runner.current()
        except Exception:
            log.warning("channel revocation check failed", exc_info=True)
            continue
        if rec is None:
            await ws.close(code=CLOSE_REVOKED, reason="runner revoked")
            return


async def _job_call(
    ws: WebSocket,
    svc: Services,
    runner: _Runner,
    msg: dict[str, Any],
    send: Callable[[str | bytes], Awaitable[None]],
) -> None:
    """A call of the job protocol (``lease``/``complete``) the runner sent over its channel,
    answered with a ``reply`` frame: ``status`` and ``body``, or ``error`` as the HTTP
    route would answer."""
    rid = msg.get("rid")
    kind = msg.get("type")
    try:
        rec = await runner.current()
        if rec is None:
            await ws.close(code=CLOSE_REVOKED, reason="runner revoked")
            raise Unauthorized("runner revoked")
        if kind == "lease":
            out: LeaseResponse | BatchCompleteResponse | ChunksResponse = await lease_jobs(
                ws.app.state, svc, rec, LeaseRequest.model_validate(msg.get("body"))
            )
        elif kind == "chunks":
            out = await append_chunks(svc, rec.id, ChunksRequest.model_validate(msg.get("body")))
        else:
            req = BatchCompleteRequest.model_validate(msg.get("body"))
            out = await complete_jobs(ws.app.state, svc, rec.id, req)
        rid_json = str(rid) if type(rid) is int else json.dumps(rid)  # (the runner's: ints)
        reply = f'{{"type":"reply","rid":{rid_json},"status":200,"body":'
        reply += out.model_dump_json(exclude_none=True) + "}"
    except asyncio.CancelledError:
        raise
    except (GpufleetError, ValidationError) as exc:
        if isinstance(exc, GpufleetError):
            failure = exc
        else:
            details = validation_details(exc)
            first = f" ({details[0]['field']}: {details[0]['message']})" if details else ""
            failure = InvalidRequest(f"invalid request{first}", details=details)
        error = {"code": failure.code, "message": failure.message}
        if failure.details is not None:
            error["details"] = failure.details
        status = STATUS_BY_CODE.get(failure.code, 500)
        reply = json.dumps({"type": "reply", "rid": rid, "status": status, "error": error})
    except Exception:
        log.exception("runner %s: %s over the channel failed", runner.rec.id, kind)
        error = {"code": "internal", "message": "internal error"}
        reply = json.dumps({"type": "reply", "rid": rid, "status": 500, "error": error})
    try:  # (not contextlib.suppress: three calls per reply)
        await send(reply)
    except Exception:  # the channel closed: the runner retries over HTTP
        return


def _models(msg: dict[str, object]) -> frozenset[tuple[str, str]]:
    refs = msg.get("models") or []
    if not isinstance(refs, list):
        return frozenset()
    return frozenset(
        (str(r["name"]), str(r["version"]))
        for r in refs
        if isinstance(r, dict) and "name" in r and "version" in r
    )


async def channel(ws: WebSocket) -> None:
    svc: Services = ws.app.state.services
    dispatcher: Dispatcher | None = svc.dispatch
    rec = await _authenticate(ws, svc)
    if rec is None:
        return
    runner_id = rec.id
    runner = _Runner(svc, rec)
    calls: set[asyncio.Task[None]] = set()
    if dispatcher is None:
        await ws.close(code=1013, reason="dispatch disabled")
        return
    await ws.accept()
    route_context = contextvars.copy_context()
    link: DirectLink | None = ws.scope.get("extensions", {}).get(EXTENSION)
    # binary frames of one turn: one message
    send = FrameBatcher(link).send if link else Outbox(ws.send_text, ws.send_bytes).send
    ch = Channel(runner_id=runner_id, send=send, region=rec.region)

    def on_frame(msg: dict[str, Any]) -> None:
        kind = msg.get("type")
        if kind in ("result", "error", "chunk"):
            dispatcher.resolve(ch, msg)
        elif kind in ("lease", "complete", "chunks"):
            # the route's log context (its request id), also when the frame came through
            # the direct link's callback, which runs in the protocol's
            call = asyncio.create_task(
                _job_call(ws, svc, runner, msg, send), context=route_context.copy()
            )
            calls.add(call)
            call.add_done_callback(calls.discard)
        elif kind in ("hello", "models"):
            raw = msg.get("raw")
            refused = is_mock(runner.rec) and not svc.settings.allow_mock_runners
            if refused and kind == "hello":
                log.warning("runner %s: %s", runner_id, MOCK_REFUSED)
            dispatcher.update(
                ch,
                frozenset() if refused else _models(msg),  # a mock runner: nothing routed
                int(msg.get("capacity") or 1),
                bool(msg.get("draining", False)),
                frozenset(str(r) for r in raw) if isinstance(raw, list) else frozenset(),
            )

    def on_message(data: bytes | str) -> None:
        try:
            if isinstance(data, bytes):  # binary: one or more frames back to back
                msgs: list[Any] = [{**head, "body": body} for head, body in unpack_frames(data)]
            else:
                msgs = [_decode(data)]
        except ValueError:
            log.warning("runner %s sent a malformed frame", runner_id)
            return
        for msg in msgs:
            if isinstance(msg, dict):
                on_frame(msg)

    dispatcher.attach(ch)
    if link is not None:  # from now on data messages skip ASGI (channel_direct.py)
        link.attach(on_message)
    recheck = asyncio.create_task(
        _recheck(ws, runner, svc.settings.channel_recheck_s), name="channel-recheck"
    )
    log.info("runner %s connected its channel", runner_id)
    try:
        while True:
            message = await ws.receive()
            if message["type"] == "websocket.disconnect":
                break
            data = message.get("bytes")
            on_message(data if data is not None else message.get("text") or "")
    except (WebSocketDisconnect, RuntimeError):
        pass
    finally:
        # A lease long poll of a gone runner would claim jobs for nobody: stop it.
        for task in (recheck, *calls):
            task.cancel()
        for task in (recheck, *calls):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        dispatcher.detach(ch)
        log.info("runner %s channel closed (%d answered)", runner_id, ch.served)


ROUTES = [WebSocketRoute("/v1/runners/{runner_id}/channel", channel)]
