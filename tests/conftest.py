"""Shared fixtures: one moto server over real HTTP per test run; fresh tables per test."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from control_plane.embedded import serialized_moto_server

# boto3 needs credentials even for moto; never real ones in tests.
os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """A moto server (DynamoDB + S3) on 127.0.0.1 for the whole run, one request at a time."""
    port = free_port()
    server = serialized_moto_server(port)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def settings(moto_endpoint: str) -> Any:
    """Settings on fresh tables and a fresh bucket (unique prefix per test)."""
    from control_plane.settings import Settings

    tag = uuid.uuid4().hex[:10]
    return Settings(
        dynamodb_endpoint_url=moto_endpoint,
        s3_endpoint_url=moto_endpoint,
        table_prefix=f"t{tag}",
        bucket=f"b{tag}",
        jwt_secret="test-signing-key-0123456789abcdef0123456789",  # type: ignore[arg-type]
        webhooks_allow_loopback=True,
        poll_interval_s=0.05,
        sweep_interval_s=0.5,
    )


@pytest.fixture
def aws(settings: Any) -> tuple[Any, Any]:
    """(dynamodb, s3) clients with every table and the bucket created."""
    from control_plane.storage.aws import make_clients
    from control_plane.storage.definitions import create_all

    dynamodb, s3 = make_clients(settings)
    create_all(dynamodb, s3, settings.table_prefix, settings.bucket, settings.aws_region)
    return dynamodb, s3
