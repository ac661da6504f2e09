"""Embedded storage: an in-process moto server (DynamoDB + S3) on 127.0.0.1 with every table
and the bucket created from ``storage.definitions`` (the same definitions iac/ renders)."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from typing import Any

from control_plane.settings import Settings, load_settings
from control_plane.storage.aws import make_clients
from control_plane.storage.definitions import create_all

_DUMMY_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "embedded",
    "AWS_SECRET_ACCESS_KEY": "embedded",  # moto accepts anything
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def serialized_moto_server(port: int, ip_address: str = "127.0.0.1") -> Any:
    """A ThreadedMotoServer that handles one request at a time.

    moto's backends are not thread-safe: a conditional write checks and writes without a lock,
    and a cancelled TransactWriteItems restores a copy of the tables taken before it started,
    silently undoing writes that other requests made meanwhile. Real DynamoDB is linearizable
    per item; one lock around each request gives moto the same property (it is GIL-bound, so
    little is lost in speed). The embedded mode and the tests both run moto this way.
    """
    import threading

    from moto import backends
    from moto.moto_server import threaded_moto_server
    from moto.server import ThreadedMotoServer

    # moto lists its package directory on every request to route it (~8% of an embedded
    # control plane's CPU under load); the list never changes while the process runs.
    if not hasattr(backends, "_gpufleet_modules"):
        modules = tuple(backends.list_of_moto_modules())
        backends._gpufleet_modules = modules  # type: ignore[attr-defined]
        backends.list_of_moto_modules = lambda: modules

    lock = threading.Lock()

    class _Serialized:
        def __init__(self, app: Any) -> None:
            self._app = app

        def __call__(self, environ: Any, start_response: Any) -> Any:
            with lock:
                return list(self._app(environ, start_response))

    class _Server(ThreadedMotoServer):
        def _server_entry(self) -> None:
            app = threaded_moto_server.DomainDispatcherApplication(
                threaded_moto_server.create_backend_app
            )
            self._server = threaded_moto_server.make_server(
                self._ip_address,
                self._port,
                _Serialized(app),
                True,
                request_handler=threaded_moto_server.MotoRequestHandler,
            )
            self._server_ready_event.set()
            self._server.serve_forever()

    return _Server(ip_address=ip_address, port=port, verbose=False)


@dataclass
class EmbeddedStorage:
    """A running moto server and the settings that point at it."""

    server: Any
    endpoint: str
    settings: Settings

    def stop(self) -> None:
        self.server.stop()


def start_embedded(**overrides: Any) -> EmbeddedStorage:
    """Start moto on a free loopback port, create tables and bucket, return settings on it.

    Sets dummy AWS credentials in this process's environment so no real ones are used.
    """
    os.environ.update(_DUMMY_CREDENTIALS)
    port = _free_port()
    server = serialized_moto_server(port)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    try:
        settings = load_settings(
            **{
                **overrides,
                "dynamodb_endpoint_url": endpoint,
                "s3_endpoint_url": endpoint,
            }
        )
        dynamodb, s3 = make_clients(settings)
        create_all(dynamodb, s3, settings.table_prefix, settings.bucket, settings.aws_region)
    except BaseException:
        server.stop()
        raise
    return EmbeddedStorage(server, endpoint, settings)
