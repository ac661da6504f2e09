"""The runner channel: ``GET /v1/runners/{runner_id}/channel`` upgraded to a WebSocket.

The upgrade request is HMAC-signed like every runner call (empty body); a bad signature is
refused with 401 before the upgrade. Frames (JSON text, binary for passthrough requests) are
documented in ``gpufleet.channel``.

The channel lives as long as the connection; the dispatcher fails its requests in flight when
it closes. A revoked runner's channel is closed at the next revocation check
(``channel_recheck_s``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging

from gpufleet.channel import unpack_frame
from starlette.concurrency import run_in_threadpool
from starlette.responses import JSONResponse
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from control_plane.api.context import Services
from control_plane.errors import Unauthorized
from control_plane.services.dispatch import Channel, Dispatcher

log = logging.getLogger(__name__)

CLOSE_REVOKED = 4401


async def _authenticate(ws: WebSocket, svc: Services) -> str | None:
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
    return rec.id


async def _recheck(ws: WebSocket, svc: Services, runner_id: str, every_s: float) -> None:
    """Close the channel once the runner is revoked."""
    while True:
        await asyncio.sleep(every_s)
        try:
            rec = await run_in_threadpool(svc.runners.find, runner_id)
        except Exception:
            log.warning("channel revocation check failed", exc_info=True)
            continue
        if rec is None or rec.revoked:
            await ws.close(code=CLOSE_REVOKED, reason="runner revoked")
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
    runner_id = await _authenticate(ws, svc)
    if runner_id is None:
        return
    if dispatcher is None:
        await ws.close(code=1013, reason="dispatch disabled")
        return
    await ws.accept()
    lock = asyncio.Lock()

    async def send(frame: str | bytes) -> None:
        async with lock:
            if isinstance(frame, bytes):
                await ws.send_bytes(frame)
            else:
                await ws.send_text(frame)

    ch = Channel(runner_id=runner_id, send=send)
    dispatcher.attach(ch)
    recheck = asyncio.create_task(
        _recheck(ws, svc, runner_id, svc.settings.channel_recheck_s), name="channel-recheck"
    )
    log.info("runner %s connected its channel", runner_id)
    try:
        while True:
            message = await ws.receive()
            if message["type"] == "websocket.disconnect":
                break
            try:
                data = message.get("bytes")
                if data is not None:
                    msg, body = unpack_frame(data)
                    msg["body"] = body
                else:
                    msg = json.loads(message.get("text") or "")
            except ValueError:
                log.warning("runner %s sent a malformed frame", runner_id)
                continue
            kind = msg.get("type")
            if kind in ("result", "error"):
                dispatcher.resolve(ch, msg)
            elif kind in ("hello", "models"):
                raw = msg.get("raw")
                dispatcher.update(
                    ch,
                    _models(msg),
                    int(msg.get("capacity") or 1),
                    bool(msg.get("draining", False)),
                    frozenset(str(r) for r in raw) if isinstance(raw, list) else frozenset(),
                )
    except (WebSocketDisconnect, RuntimeError):
        pass
    finally:
        recheck.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await recheck
        dispatcher.detach(ch)
        log.info("runner %s channel closed (%d answered)", runner_id, ch.served)


ROUTES = [WebSocketRoute("/v1/runners/{runner_id}/channel", channel)]
