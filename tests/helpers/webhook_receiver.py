"""A webhook receiver for tests: a real HTTP server on 127.0.0.1 in a thread.

It records every request and answers from a script of status codes (then ``default``);
a scripted ``(302, "http://…")`` answers a redirect to that location.

    with Receiver([500, 500, 500, 200]) as rx:
        ...            # deliver to rx.url
    rx.requests        # [Received(path, headers, body), …]
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Step = int | tuple[int, str]


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]
    body: bytes


class Receiver:
    """Records POSTs on 127.0.0.1; ``delay_s`` holds every answer that long."""

    def __init__(
        self, script: list[Step] | None = None, default: int = 200, delay_s: float = 0
    ) -> None:
        self.requests: list[Received] = []
        self._script = list(script or [])
        self._default = default
        self._delay_s = delay_s
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length)
                with receiver._lock:
                    receiver.requests.append(
                        Received(self.path, {k.lower(): v for k, v in self.headers.items()}, body)
                    )
                    step: Step = receiver._script.pop(0) if receiver._script else receiver._default
                if receiver._delay_s:
                    time.sleep(receiver._delay_s)
                code, location = (step, None) if isinstance(step, int) else step
                self.send_response(code)
                if location:
                    self.send_header("Location", location)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                return

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def __enter__(self) -> Receiver:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
