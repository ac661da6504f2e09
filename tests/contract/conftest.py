"""Store fixtures of the contract suite: each store test runs once per backend.

``backend`` is parametrised over the embedded SQLite store and DynamoDB (moto over HTTP);
a test that needs only one backend overrides it with ``@pytest.mark.parametrize("backend",
[...])``. The DynamoDB fixtures (``settings``, ``aws``; ``store_kind`` is "dynamodb" in this
directory) are requested lazily, so the SQLite runs never touch moto.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from control_plane.storage.dynamo_idempotency import DynamoIdempotencyStore
from control_plane.storage.dynamo_jobs import DynamoJobRecordStore
from control_plane.storage.dynamo_queue import DynamoQueueStore
from control_plane.storage.dynamo_streams import DynamoStreamStore
from control_plane.storage.protocols import IdempotencyStore, JobRecordStore, QueueStore
from control_plane.storage.protocols_streams import StreamStore
from control_plane.storage.sqlite import schema
from control_plane.storage.sqlite.db import Database
from control_plane.storage.sqlite.idempotency import SqliteIdempotencyStore
from control_plane.storage.sqlite.jobs import SqliteJobRecordStore
from control_plane.storage.sqlite.queue import SqliteQueueStore
from control_plane.storage.sqlite.streams import SqliteStreamStore

BACKENDS = ["sqlite", "dynamo"]


@pytest.fixture
def store_kind() -> str:
    """``settings``/``aws`` here are the DynamoDB side of a contract test (tests/conftest.py)."""
    return "dynamodb"


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def sqlite_db(tmp_path: Path) -> Iterator[Database]:
    """A fresh embedded store file with the full schema."""
    db = Database(tmp_path / "gpufleet.db")
    schema.migrate(db)
    yield db
    db.close()


def _aws(request: pytest.FixtureRequest) -> tuple[Any, Any]:
    """(dynamodb client, settings) on fresh moto tables."""
    settings = request.getfixturevalue("settings")
    return request.getfixturevalue("aws")[0], settings


@pytest.fixture
def jobs(backend: str, request: pytest.FixtureRequest) -> JobRecordStore:
    if backend == "sqlite":
        return SqliteJobRecordStore(request.getfixturevalue("sqlite_db"))
    dynamodb, settings = _aws(request)
    return DynamoJobRecordStore(dynamodb, settings.table("jobs"))


@pytest.fixture
def queue(backend: str, request: pytest.FixtureRequest) -> QueueStore:
    if backend == "sqlite":
        return SqliteQueueStore(request.getfixturevalue("sqlite_db"))
    dynamodb, settings = _aws(request)
    t = settings.table
    return DynamoQueueStore(dynamodb, t("queue"), t("leases"), t("models"))


@pytest.fixture
def idempotency(backend: str, request: pytest.FixtureRequest) -> IdempotencyStore:
    if backend == "sqlite":
        return SqliteIdempotencyStore(request.getfixturevalue("sqlite_db"))
    dynamodb, settings = _aws(request)
    return DynamoIdempotencyStore(dynamodb, settings.table("idempotency"))


@pytest.fixture
def streams(backend: str, jobs: JobRecordStore, request: pytest.FixtureRequest) -> StreamStore:
    """The chunk store on the same backend (and file / tables) as ``jobs``, which fences it."""
    if backend == "sqlite":
        return SqliteStreamStore(request.getfixturevalue("sqlite_db"))
    dynamodb, settings = _aws(request)
    return DynamoStreamStore(dynamodb, settings.table("streams"), settings.table("jobs"))
