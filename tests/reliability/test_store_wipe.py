"""A store that lost its data does not look healthy: the real app on a socket, on both
stores. DynamoDB (moto over HTTP): the tables are deleted (health names the missing schema),
then created again empty (health names the lost marker). Embedded SQLite: every table is
emptied behind the control plane's back. Each time ``/v1/health`` answers 503 ``degraded``
with the reason in its ``store`` check and the control plane logs it once at ERROR; a
control plane started on the empty store adopts it (healthy again).
docs/failure_modes.md ("The store lost its data") points here.
"""

from __future__ import annotations

import logging
import sqlite3
from typing import Any

import httpx
import pytest

from control_plane.composition import build_services
from control_plane.storage.definitions import TABLES, create_all
from control_plane.storage.embedded_store import DB_FILE
from tests.conftest import STORE_KINDS
from tests.helpers.fleet import *  # noqa: F403  (fixtures: cp_url, cp_services)

pytestmark = pytest.mark.parametrize("store_kind", STORE_KINDS)


def _health(url: str) -> tuple[int, dict[str, Any]]:
    r = httpx.get(f"{url}/v1/health", timeout=30)
    return r.status_code, r.json()


def _wipe_sqlite(settings: Any) -> None:
    conn = sqlite3.connect(settings.data_dir / DB_FILE, isolation_level=None, timeout=10)
    names = [
        row[0]
        for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        if row[0] != "schema_version" and not row[0].startswith("sqlite_")
    ]
    conn.execute("BEGIN IMMEDIATE")
    for name in names:
        conn.execute(f'DELETE FROM "{name}"')  # noqa: S608 (names read from sqlite_master)
    conn.execute("COMMIT")
    conn.close()


def test_a_wiped_store_is_reported_not_served_as_healthy(
    cp_url: str,
    cp_services: Any,
    settings: Any,
    stores: Any,
    store_kind: str,
    request: pytest.FixtureRequest,
    caplog: pytest.LogCaptureFixture,
) -> None:
    status, body = _health(cp_url)
    assert status == 200 and body["checks"]["store"] == "ok", body
    caplog.set_level(logging.ERROR, logger="control_plane.services.store_marker")
    if store_kind == "dynamodb":
        dynamodb, s3 = request.getfixturevalue("aws")
        for name in TABLES:
            dynamodb.delete_table(TableName=settings.table(name))
        status, body = _health(cp_url)
        assert status == 503 and body["status"] == "degraded"
        assert "lost its schema" in body["checks"]["store"], body
        create_all(dynamodb, s3, settings.table_prefix, settings.bucket, settings.aws_region)
    else:
        _wipe_sqlite(settings)
    for _ in range(2):
        status, body = _health(cp_url)
        assert status == 503 and body["status"] == "degraded", body
        assert "the store lost its data" in body["checks"]["store"], body
        assert "new join token" in body["checks"]["store"]
    lost = [r for r in caplog.records if "lost its data" in r.getMessage()]
    assert len(lost) == 1 and lost[0].levelno == logging.ERROR  # logged once, not per check

    fresh = build_services(settings, stores)  # a control plane started on the empty store
    fresh.checks["store"]()  # adopts it: no error
    fresh.checks["store"]()
