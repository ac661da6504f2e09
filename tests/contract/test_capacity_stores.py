"""Contract of the capacity store (pools, the fleet's decision, the decision log): the same
tests on the embedded SQLite store and on DynamoDB (moto over HTTP)."""

from __future__ import annotations

import threading

import pytest

from control_plane.errors import Unauthorized
from control_plane.services.auth import AuthService
from control_plane.storage.dynamo_auth import DynamoAuthStore
from control_plane.storage.dynamo_capacity import DynamoCapacityStore
from control_plane.storage.protocols_auth import AuthStore, JoinTokenRecord
from control_plane.storage.protocols_capacity import CapacityStore
from control_plane.storage.sqlite.auth import SqliteAuthStore
from control_plane.storage.sqlite.capacity import SqliteCapacityStore


@pytest.fixture
def capacity(backend: str, request: pytest.FixtureRequest) -> CapacityStore:
    if backend == "sqlite":
        return SqliteCapacityStore(request.getfixturevalue("sqlite_db"))
    settings = request.getfixturevalue("settings")
    dynamodb = request.getfixturevalue("aws")[0]
    return DynamoCapacityStore(dynamodb, settings.table("capacity"))


def test_pools_put_get_list_delete(capacity: CapacityStore) -> None:
    assert capacity.get_pool("a") is None
    assert capacity.list_pools() == []
    first = capacity.put_pool("b", {"max_hosts": 2, "labels": {"x": "1"}}, 100.0)
    assert (first.name, first.spec, first.created_at, first.updated_at) == (
        "b",
        {"max_hosts": 2, "labels": {"x": "1"}},
        100.0,
        100.0,
    )
    capacity.put_pool("a", {"max_hosts": 1}, 101.0)
    again = capacity.put_pool("b", {"max_hosts": 3}, 102.5)
    assert again.spec == {"max_hosts": 3}
    assert (again.created_at, again.updated_at) == (100.0, 102.5)  # created_at is kept
    got = capacity.get_pool("b")
    assert got is not None and got.spec == {"max_hosts": 3}
    assert [p.name for p in capacity.list_pools()] == ["a", "b"]
    assert capacity.delete_pool("b") is True
    assert capacity.delete_pool("b") is False
    assert capacity.get_pool("b") is None
    assert [p.name for p in capacity.list_pools()] == ["a"]


def test_decision_is_fenced_by_revision(capacity: CapacityStore) -> None:
    assert capacity.get_decision() is None
    assert capacity.save_decision({"n": 1}, 10.0, 1) is False  # nothing stored yet
    assert capacity.save_decision({"n": 1}, 10.0, 0) is True
    assert capacity.save_decision({"n": 9}, 10.0, 0) is False  # revision 1 exists
    rec = capacity.get_decision()
    assert rec is not None and (rec.revision, rec.decided_at, rec.doc) == (1, 10.0, {"n": 1})
    assert capacity.save_decision({"n": 2}, 11.5, 1) is True
    assert capacity.save_decision({"n": 3}, 12.0, 1) is False  # stale revision
    rec = capacity.get_decision()
    assert rec is not None and (rec.revision, rec.doc) == (2, {"n": 2})


def test_concurrent_deciders_exactly_one_wins(capacity: CapacityStore) -> None:
    capacity.save_decision({"n": 0}, 1.0, 0)
    results: list[bool] = []
    lock = threading.Lock()
    barrier = threading.Barrier(4)

    def decide(i: int) -> None:
        barrier.wait()
        ok = capacity.save_decision({"n": i}, 2.0, 1)
        with lock:
            results.append(ok)

    threads = [threading.Thread(target=decide, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [False, False, False, True]
    rec = capacity.get_decision()
    assert rec is not None and rec.revision == 2


def test_events_newest_first_per_pool(capacity: CapacityStore) -> None:
    assert capacity.list_events("p", 10) == []
    capacity.append_events("p", [{"at": 1.0, "action": "launch"}], keep=50)
    capacity.append_events(
        "p", [{"at": 2.0, "action": "drain", "host": "h1"}, {"at": 3.0, "action": "x"}], keep=50
    )
    capacity.append_events("q", [{"at": 5.0, "action": "launch"}], keep=50)
    got = capacity.list_events("p", 10)
    assert [e["at"] for e in got] == [3.0, 2.0, 1.0]
    assert got[1] == {"at": 2.0, "action": "drain", "host": "h1"}
    assert [e["at"] for e in capacity.list_events("p", 2)] == [3.0, 2.0]
    assert [e["at"] for e in capacity.list_events("q", 10)] == [5.0]
    capacity.append_events("p", [], keep=50)  # nothing to add is fine


def test_events_keep_at_least_the_newest(capacity: CapacityStore) -> None:
    for i in range(6):
        capacity.append_events("p", [{"at": float(i)}], keep=3)
    got = [e["at"] for e in capacity.list_events("p", 100)]
    assert got[:3] == [5.0, 4.0, 3.0]
    assert got == sorted(got, reverse=True)


@pytest.fixture
def auth(backend: str, request: pytest.FixtureRequest) -> AuthStore:
    if backend == "sqlite":
        return SqliteAuthStore(request.getfixturevalue("sqlite_db"))
    settings = request.getfixturevalue("settings")
    return DynamoAuthStore(request.getfixturevalue("aws")[0], settings.table("auth"))


def test_a_join_token_is_consumed_once(auth: AuthStore) -> None:
    auth.save_join_token(JoinTokenRecord("h1", "eu", {"gpufleet.host": "x"}, 2e9))
    results: list[bool] = []
    barrier = threading.Barrier(3)

    def consume() -> None:
        barrier.wait()
        results.append(auth.consume_join_token("h1"))

    threads = [threading.Thread(target=consume) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [False, False, True]
    assert auth.find_join_token("h1") is None
    assert auth.consume_join_token("nope") is False


def test_host_tokens_join_one_runner_pool_tokens_many(auth: AuthStore) -> None:
    svc = AuthService(
        auth, jwt_secret="s" * 32, issuer="i", audience="a", access_ttl_s=60, refresh_ttl_s=600
    )
    host = svc.issue_join_token("eu", {"gpufleet.pool": "p", "gpufleet.host": "h1"}, 600)
    assert svc.redeem_join_token(host).labels["gpufleet.host"] == "h1"
    with pytest.raises(Unauthorized):
        svc.redeem_join_token(host)
    shared = svc.issue_join_token("eu", {"gpufleet.pool": "p"}, 600, max_uses=3)
    svc.redeem_join_token(shared)
    svc.redeem_join_token(shared)  # a pool's token (aws-asg user data) joins every host
