"""A stalled store: requests answer 503 `unavailable` with Retry-After within their storage
deadline, health turns degraded at once, and everything recovers by itself when the store
answers again. The real app on a socket, the SDK as a caller; on both stores:

- DynamoDB + S3 (moto over HTTP) behind a TCP proxy that freezes (connections stay open,
  no byte moves: a hung storage service);
- the embedded store, with another process-like connection holding the SQLite write lock
  (a stuck writer, a frozen disk for writers).

docs/failure_modes.md ("Storage") states these guarantees next to this test.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import numpy as np
import pytest
from gpufleet import Client
from gpufleet import errors as gf_errors

from control_plane.settings import Settings
from control_plane.storage.embedded_store import DB_FILE
from tests.conftest import STORE_KINDS, TEST_JWT_SECRET
from tests.helpers.fleet import *  # noqa: F403  (fixtures: cp_url, admin_key, ready_model)
from tests.helpers.stall_proxy import StallProxy

pytestmark = pytest.mark.parametrize("store_kind", STORE_KINDS)

BUDGET_S = 4.0
READ_TIMEOUT_S = 2.0
HEALTH_TIMEOUT_S = 1.0
# A request under a stall ends within its budget plus the one storage call that overran it.
REQUEST_LIMIT_S = BUDGET_S + READ_TIMEOUT_S + 2.0
INPUTS = {"INPUT0": np.ones((1, 4), np.float32), "INPUT1": np.ones((1, 4), np.float32)}


@pytest.fixture
def proxy(moto_endpoint: str) -> Iterator[StallProxy]:
    p = StallProxy(moto_endpoint)
    yield p
    p.close()


@pytest.fixture
def settings(store_kind: str, tmp_path: Any, request: pytest.FixtureRequest) -> Settings:
    common: dict[str, Any] = {
        "jwt_secret": TEST_JWT_SECRET,
        "poll_interval_s": 0.05,
        "storage_connect_timeout_s": 0.5,
        "storage_read_timeout_s": READ_TIMEOUT_S,
        "storage_max_attempts": 1,
        "storage_budget_s": BUDGET_S,
        "health_timeout_s": HEALTH_TIMEOUT_S,
    }
    if store_kind == "sqlite":
        return Settings(embedded=True, data_dir=tmp_path / "data", **common)
    url = request.getfixturevalue("proxy").url
    tag = f"stall{time.monotonic_ns() % 10**9}"
    return Settings(
        dynamodb_endpoint_url=url, s3_endpoint_url=url, table_prefix=tag, bucket=tag, **common
    )


@pytest.fixture
def aws(settings: Settings, store_kind: str) -> tuple[Any, Any]:
    """The tables and the bucket, created with patient clients (moto's table creation may
    take longer than the short read timeout under test)."""
    from control_plane.storage.aws import make_clients
    from control_plane.storage.definitions import create_all

    patient = settings.model_copy(update={"storage_read_timeout_s": 30.0})
    dynamodb, s3 = make_clients(patient)
    create_all(dynamodb, s3, settings.table_prefix, settings.bucket, settings.aws_region)
    return dynamodb, s3


class Stall:
    def __init__(self, freeze: Callable[[], None], thaw: Callable[[], None]) -> None:
        self.freeze, self.thaw = freeze, thaw


@pytest.fixture
def stall(store_kind: str, settings: Settings, request: pytest.FixtureRequest) -> Iterator[Stall]:
    if store_kind == "dynamodb":
        p: StallProxy = request.getfixturevalue("proxy")
        yield Stall(p.freeze, p.thaw)
        p.thaw()
        return
    assert settings.data_dir is not None
    holder = sqlite3.connect(settings.data_dir / DB_FILE, isolation_level=None, timeout=5)

    def thaw() -> None:
        if holder.in_transaction:
            holder.execute("ROLLBACK")

    yield Stall(lambda: holder.execute("BEGIN EXCLUSIVE"), thaw)
    thaw()
    holder.close()


def _health(url: str) -> tuple[int, dict[str, Any], float]:
    t0 = time.monotonic()
    r = httpx.get(f"{url}/v1/health", timeout=30)
    return r.status_code, r.json(), time.monotonic() - t0


def test_a_stalled_store_answers_503_at_once_and_recovers_by_itself(
    cp_url: str, admin_key: str, ready_model: Any, stall: Stall
) -> None:
    with Client(cp_url, api_key=admin_key, timeout=30, max_retries=0) as client:
        list(client.list())  # signed in before the stall
        assert _health(cp_url)[0] == 200
        stall.freeze()
        try:
            status, body, took = _health(cp_url)
            assert status == 503 and body["status"] == "degraded", body
            assert took < HEALTH_TIMEOUT_S + 2.0, f"health took {took:.1f}s"

            t0 = time.monotonic()
            with pytest.raises(gf_errors.UnavailableError) as failed:
                client.submit("add_sub", INPUTS)
            took = time.monotonic() - t0
            assert took < REQUEST_LIMIT_S, f"a submit took {took:.1f}s under a stall"
            err = failed.value
            assert err.response is not None and int(err.response.headers["Retry-After"]) >= 1
            assert err.may_exist and err.idempotency_key  # the caller can tell, and resubmit
        finally:
            stall.thaw()

        deadline = time.monotonic() + 20
        while (status := _health(cp_url)[0]) != 200 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert status == 200, "health did not recover by itself"
        view = client.submit("add_sub", INPUTS, idempotency_key=err.idempotency_key)
        again = client.submit("add_sub", INPUTS, idempotency_key=err.idempotency_key)
        assert again.id == view.id
        assert [j.id for j in client.list()] == [view.id]  # one job for one key
