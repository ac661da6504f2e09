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
    from moto.server import ThreadedMotoServer

    os.environ.update(_DUMMY_CREDENTIALS)
    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    try:
        settings = load_settings(
            **{
                **overrides,
                "dynamodb_endpoint_url": endpoint,
                "s3_endpoint_url": endpoint,
                "embedded": True,
            }
        )
        dynamodb, s3 = make_clients(settings)
        create_all(dynamodb, s3, settings.table_prefix, settings.bucket, settings.aws_region)
    except BaseException:
        server.stop()
        raise
    return EmbeddedStorage(server, endpoint, settings)
