"""The console's rollup store (protocols_rollups.RollupStore) on both backends: the embedded
SQLite store and DynamoDB on moto over HTTP. Counters add up (concurrent adds too), gauges
are replaced, reads are by minute range in order."""

from __future__ import annotations

import threading

import pytest

from control_plane.storage.stores import Stores
from tests.conftest import STORE_KINDS

pytestmark = pytest.mark.parametrize("store_kind", STORE_KINDS)
EXP = 4_000_000_000.0


def test_counters_add_and_gauges_replace(stores: Stores) -> None:
    r = stores.rollups
    assert r is not None
    r.add("jobs#acme", 100, {"SUCCEEDED": 2, "FAILED": 1}, EXP)
    r.add("jobs#acme", 100, {"SUCCEEDED": 3}, EXP)
    r.put("jobs#acme", 100, {"depth:m": 7}, EXP)
    r.put("jobs#acme", 100, {"depth:m": 4}, EXP)
    r.add("jobs#acme", 102, {"name with spaces/and:colons": 1.5}, EXP)
    r.add("jobs#other", 100, {"SUCCEEDED": 9}, EXP)
    assert r.read("jobs#acme", 99, 102) == [
        (100, {"SUCCEEDED": 5.0, "FAILED": 1.0, "depth:m": 4.0}),
        (102, {"name with spaces/and:colons": 1.5}),
    ]
    assert r.read("jobs#acme", 101, 101) == []
    assert r.read("jobs#acme", 102, 200) == [(102, {"name with spaces/and:colons": 1.5})]
    assert r.read("nothing", 0, 10**9) == []
    r.add("jobs#acme", 103, {}, EXP)  # nothing to add: no row
    assert [m for m, _ in r.read("jobs#acme", 0, 10**6)] == [100, 102]


def test_concurrent_adds_all_count(stores: Stores) -> None:
    r = stores.rollups
    assert r is not None

    def add() -> None:
        for _ in range(5):
            r.add("jobs#*", 7, {"SUBMITTED": 1}, EXP)

    threads = [threading.Thread(target=add) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert r.read("jobs#*", 7, 7) == [(7, {"SUBMITTED": 20.0})]
