"""Shared fixtures: settings → stores (the embedded SQLite store by default, DynamoDB + S3 on
moto when a test asks for it) → services → app → client.

``store_kind`` says which store a test runs on: ``"sqlite"`` (the embedded store in the
test's tmp_path; fast, the default) or ``"dynamodb"`` (fresh tables and a bucket on one
moto server over real HTTP per run). Override it for a directory or module with a fixture
of the same name, or run a test on both with ``@pytest.mark.parametrize("store_kind",
STORE_KINDS)``. ``aws`` (the raw boto3 clients) exists only on ``"dynamodb"``: tests of
DynamoDB/S3 behaviour ask for it and say so with their ``store_kind``.

The embedded store's presigned URLs are served by the control plane itself: ``stores``
mounts the blob routes on the session's :class:`~tests.helpers.blob_host.BlobHost`; a
fixture that builds the app points them at the app instead (``serve_blobs_through``).
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from control_plane.embedded import serialized_moto_server
from control_plane.settings import Settings
from control_plane.storage.local_blobs import LocalBlobStore
from control_plane.storage.stores import Stores
from tests.helpers.blob_host import BlobHost, blob_app

# boto3 needs credentials even for moto; never real ones in tests.
os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
# Many tests run mock runners (made-up answers) against a control plane built in this process
# (Settings() reads the environment); a fleet refuses them work unless allowed. Tests of the
# refusal set allow_mock_runners=False themselves.
os.environ.setdefault("GPUFLEET_ALLOW_MOCK_RUNNERS", "true")

STORE_KINDS = ["sqlite", "dynamodb"]
TEST_JWT_SECRET = "test-signing-key-0123456789abcdef0123456789"


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


@pytest.fixture(scope="session")
def blob_host() -> Iterator[BlobHost]:
    """The loopback server that serves the embedded stores' blob URLs (started on first use)."""
    host = BlobHost()
    yield host
    host.close()


@pytest.fixture
def store_kind() -> str:
    """The store behind ``settings``/``stores``: "sqlite" unless overridden (module docstring)."""
    return "sqlite"


@pytest.fixture
def settings(store_kind: str, request: pytest.FixtureRequest, tmp_path: Any) -> Settings:
    """Test settings on a fresh store: a data dir in tmp_path, or fresh table/bucket names."""
    common: dict[str, Any] = {
        "jwt_secret": TEST_JWT_SECRET,
        "webhooks_allow_loopback": True,
        "poll_interval_s": 0.05,
        "sweep_interval_s": 0.5,
    }
    if store_kind == "sqlite":
        return Settings(embedded=True, data_dir=tmp_path / "data", **common)
    if store_kind != "dynamodb":
        raise pytest.UsageError(f"store_kind must be one of {STORE_KINDS}, not {store_kind!r}")
    moto = request.getfixturevalue("moto_endpoint")
    tag = uuid.uuid4().hex[:10]
    return Settings(
        dynamodb_endpoint_url=moto,
        s3_endpoint_url=moto,
        table_prefix=f"t{tag}",
        bucket=f"b{tag}",
        **common,
    )


@pytest.fixture
def aws(settings: Settings, store_kind: str) -> tuple[Any, Any]:
    """(dynamodb, s3) clients with every table and the bucket created (``store_kind``
    "dynamodb" only)."""
    if store_kind != "dynamodb":
        pytest.fail("the aws fixture needs store_kind 'dynamodb' (override store_kind)")
    from control_plane.storage.aws import make_clients
    from control_plane.storage.definitions import create_all

    dynamodb, s3 = make_clients(settings)
    create_all(dynamodb, s3, settings.table_prefix, settings.bucket, settings.aws_region)
    return dynamodb, s3


@pytest.fixture
def stores(settings: Settings, store_kind: str, request: pytest.FixtureRequest) -> Iterator[Stores]:
    """Every store of one control plane, on ``store_kind``; closed after the test."""
    if store_kind == "dynamodb":
        from control_plane.storage.stores import dynamo_stores

        request.getfixturevalue("aws")
        yield dynamo_stores(settings)
        return
    from control_plane.storage.embedded_store import open_embedded_store

    st = open_embedded_store(settings, settings.data_dir)
    try:
        assert isinstance(st.blobs, LocalBlobStore)
        with request.getfixturevalue("blob_host").mount(blob_app(st.blobs)) as url:
            st.set_public_url(url)
            yield st
    finally:
        st.close()


def serve_blobs_through(app: Any, stores: Stores, request: pytest.FixtureRequest) -> Any:
    """``app``; until the test ends, the embedded store's blob URLs reach ``app`` itself
    (mounted on the blob host), as they reach a control plane on its own socket. On S3 the
    URLs name the bucket: nothing to do."""
    if stores.kind != "sqlite":
        return app
    before = stores.blobs.base_url  # type: ignore[attr-defined]
    mounted = request.getfixturevalue("blob_host").mount(app)
    stores.set_public_url(mounted.__enter__())

    def unmount() -> None:
        mounted.__exit__(None, None, None)
        stores.set_public_url(before)

    request.addfinalizer(unmount)
    return app
