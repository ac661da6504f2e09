"""Local status of the daemon as JSON on ``http://127.0.0.1:<status_port>/status``.

A minimal HTTP/1.0 responder on asyncio streams (loopback only; GET /status and
GET /healthz), read by ``gpufleet-runner status``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)


class StatusServer:
    """Serves ``snapshot()`` as JSON."""

    def __init__(self, snapshot: Callable[[], dict[str, Any]], port: int) -> None:
        self._snapshot = snapshot
        self._port = port
        self._server: asyncio.Server | None = None

    @property
    def port(self) -> int:
        if self._server is None or not self._server.sockets:
            return self._port
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self._port)
        log.info("status on http://127.0.0.1:%d/status", self.port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
            self._server = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await asyncio.wait_for(reader.readline(), 5)
            while (await asyncio.wait_for(reader.readline(), 5)) not in (b"\r\n", b"\n", b""):
                pass
            parts = line.decode(errors="replace").split()
            path = parts[1] if len(parts) > 1 else ""
            if parts[:1] == ["GET"] and path in ("/status", "/"):
                status, body = 200, self._snapshot()
            elif parts[:1] == ["GET"] and path == "/healthz":
                status, body = 200, {"status": "ok"}
            else:
                status, body = 404, {"error": "not found"}
            data = json.dumps(body, default=str).encode()
            reason = "OK" if status == 200 else "Not Found"
            writer.write(
                f"HTTP/1.0 {status} {reason}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n".encode()
                + data
            )
            await writer.drain()
        except Exception:
            log.debug("status request failed", exc_info=True)
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
