"""Receive and verify job webhooks (Standard Webhooks signatures).

Starts a small HTTP receiver on 127.0.0.1, submits an add_sub job whose webhook points at
it, and prints each verified delivery until the `job.completed` one arrives. Verification
uses the tenant's signing secret from `GET /v1/webhooks/secret`. The control plane must
allow loopback targets (GPUFLEET_WEBHOOKS_ALLOW_LOOPBACK=true) for this local demo.

    GPUFLEET_URL=... GPUFLEET_API_KEY=... python examples/webhook_receiver.py
"""

import os
import queue
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

import numpy as np
from gpufleet import Client, WebhookVerificationError, verify_webhook


def make_handler(secret: str, events: "queue.Queue[Any]") -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            try:
                payload = verify_webhook(dict(self.headers.items()), body, secret)
            except WebhookVerificationError as exc:
                self.send_response(400)
                self.end_headers()
                print("rejected delivery:", exc)
                return
            self.send_response(204)
            self.end_headers()
            events.put(payload)

        def log_message(self, *args: Any) -> None:
            pass

    return Handler


def main() -> None:
    with Client(os.environ["GPUFLEET_URL"], api_key=os.environ["GPUFLEET_API_KEY"]) as fleet:
        secret = fleet.webhooks.secret()
        events: queue.Queue[Any] = queue.Queue()
        server = HTTPServer(("127.0.0.1", 0), make_handler(secret, events))
        threading.Thread(target=server.serve_forever, daemon=True).start()
        url = f"http://127.0.0.1:{server.server_port}/hook"
        ones = np.ones((1, 4), dtype=np.float32)
        job = fleet.submit(
            "add_sub",
            {"INPUT0": ones, "INPUT1": ones},
            webhook={"url": url, "events": ["running", "completed"]},
        )
        print(f"submitted {job.id}; listening on {url}")
        try:
            while True:
                event = events.get(timeout=120)
                print("verified", event["type"], event["data"]["id"], event["data"]["status"])
                if event["type"] == "job.completed":
                    break
        finally:
            server.shutdown()


if __name__ == "__main__":
    main()
