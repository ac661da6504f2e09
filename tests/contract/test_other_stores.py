"""Contract of the model/deployment, auth, runner, nonce, webhook and webhook-secret stores:
the same tests on the embedded SQLite store and on DynamoDB (moto over HTTP), asserting on
state and on who wins each conditional write."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol, TypeVar

import pytest

from control_plane.errors import Conflict
from control_plane.services.webhook_records import (
    AttemptRecord,
    Delivery,
    DueRef,
    SecretRecord,
    SecretStore,
    WebhookStore,
)
from control_plane.storage.dynamo_auth import DynamoAuthStore
from control_plane.storage.dynamo_models import DynamoModelStore
from control_plane.storage.dynamo_runners import DynamoNonceStore, DynamoRunnerStore
from control_plane.storage.dynamo_webhooks import DynamoWebhookSecretStore, DynamoWebhookStore
from control_plane.storage.protocols import DeploymentStore, ModelStore, ModelVersionRecord
from control_plane.storage.protocols_auth import (
    ApiKeyRecord,
    AuthStore,
    JoinTokenRecord,
    NonceStore,
    RefreshRecord,
    RunnerRecord,
    RunnerStore,
)
from control_plane.storage.sqlite import auth as sqlite_auth
from control_plane.storage.sqlite import models as sqlite_models
from control_plane.storage.sqlite import runners as sqlite_runners
from control_plane.storage.sqlite import webhooks as sqlite_webhooks
from control_plane.storage.sqlite.auth import SqliteAuthStore
from control_plane.storage.sqlite.db import Database
from control_plane.storage.sqlite.models import SqliteModelStore
from control_plane.storage.sqlite.runners import SqliteNonceStore, SqliteRunnerStore
from control_plane.storage.sqlite.webhooks import SqliteWebhookSecretStore, SqliteWebhookStore

T = TypeVar("T")


class ModelsAndDeployments(ModelStore, DeploymentStore, Protocol):
    """Both protocols, as one class implements them on each backend."""


@dataclass
class Stores:
    kind: str
    models: ModelsAndDeployments
    auth: AuthStore
    runners: RunnerStore
    nonces: NonceStore
    webhooks: WebhookStore
    secrets: SecretStore
    db: Database | None = None


@pytest.fixture
def other_sqlite_db(tmp_path: Path) -> Iterator[Database]:
    db = Database(tmp_path / "g.db")
    try:
        from control_plane.storage.sqlite import schema
    except ImportError:  # a sibling module is not written yet: only this suite's tables
        with db.write() as conn:
            for module in (sqlite_models, sqlite_auth, sqlite_runners, sqlite_webhooks):
                for statement in module.DDL:
                    conn.execute(statement)
    else:
        schema.migrate(db)
    yield db
    db.close()


@pytest.fixture(params=["sqlite", "dynamo"])
def other_backend(request: pytest.FixtureRequest) -> Stores:
    if request.param == "sqlite":
        db: Database = request.getfixturevalue("other_sqlite_db")
        return Stores(
            kind="sqlite",
            models=SqliteModelStore(db),
            auth=SqliteAuthStore(db),
            runners=SqliteRunnerStore(db),
            nonces=SqliteNonceStore(db),
            webhooks=SqliteWebhookStore(db),
            secrets=SqliteWebhookSecretStore(db),
            db=db,
        )
    settings = request.getfixturevalue("settings")
    dynamodb = request.getfixturevalue("aws")[0]
    t = settings.table
    return Stores(
        kind="dynamo",
        models=DynamoModelStore(dynamodb, t("models")),
        auth=DynamoAuthStore(dynamodb, t("auth")),
        runners=DynamoRunnerStore(dynamodb, t("runners")),
        nonces=DynamoNonceStore(dynamodb, t("nonces")),
        webhooks=DynamoWebhookStore(dynamodb, t("webhooks")),
        secrets=DynamoWebhookSecretStore(dynamodb, t("auth")),
    )


def race(n: int, fn: Callable[[int], T]) -> list[T]:
    """Run ``fn(i)`` on ``n`` threads released together; their results in thread order."""
    barrier = threading.Barrier(n)
    results: list[Any] = [None] * n
    errors: list[BaseException] = []

    def run(i: int) -> None:
        barrier.wait()
        try:
            results[i] = fn(i)
        except BaseException as exc:  # re-raised below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    if errors:
        raise errors[0]
    return results


# ---------------------------------------------------------------------- models & deployments
def version(v: str, state: str = "UPLOADING", **kw: Any) -> ModelVersionRecord:
    return ModelVersionRecord(
        name="m",
        version=v,
        tenant="acme",
        state=state,
        created_at=1000.5,
        files=[{"path": "1/model.py", "size": 3}],
        uploads={"1/model.py": "up-1"},
        **kw,
    )


def test_model_name_first_claim_owns_it(other_backend: Stores) -> None:
    m = other_backend.models
    assert m.owner("m") is None
    assert m.claim_name("m", "acme", 1.0) == "acme"
    assert m.claim_name("m", "acme", 2.0) == "acme"  # the owner may claim again
    assert m.claim_name("m", "globex", 3.0) == "acme"  # another tenant loses
    assert m.owner("m") == "acme"
    assert m.claim_name("b", "globex", 4.0) == "globex"
    assert m.list_names() == [("b", "globex"), ("m", "acme")]


def test_model_name_released_only_by_owner_when_empty(other_backend: Stores) -> None:
    m = other_backend.models
    assert m.claim_name("m", "acme", 1.0) == "acme"
    assert not m.release_name("m", "globex")  # not the owner
    assert m.put_version(version("1"))
    assert not m.release_name("m", "acme")  # a version remains
    assert m.owner("m") == "acme"
    assert m.delete_version("m", "1")
    assert m.release_name("m", "acme")
    assert m.owner("m") is None
    assert not m.release_name("m", "acme")  # nothing left to release
    assert m.claim_name("m", "globex", 2.0) == "globex"


def test_model_versions_once_ready_once_and_deleted(other_backend: Stores) -> None:
    m = other_backend.models
    assert m.list_versions("m") == []
    assert m.put_version(version("2"))
    assert not m.put_version(version("2", state="READY"))  # exists: the first is kept
    assert m.get_version("m", "2") == version("2")
    assert m.get_version("m", "3") is None
    assert m.put_version(version("10"))
    assert m.put_version(version("1"))
    assert [v.version for v in m.list_versions("m")] == ["10", "2", "1"]
    assert m.list_versions("other") == []

    ready = replace(
        version("2"),
        platform=None,
        backend="python",
        max_batch_size=8,
        inputs=[{"name": "x"}],
        outputs=[{"name": "y"}],
        config={"k": 1},
        files=[],  # not written by mark_ready
    )
    assert m.mark_ready(ready)
    got = m.get_version("m", "2")
    assert got == replace(
        version("2"),
        state="READY",
        platform="",  # None is stored as ""
        backend="python",
        max_batch_size=8,
        inputs=[{"name": "x"}],
        outputs=[{"name": "y"}],
        config={"k": 1},
    )
    assert not m.mark_ready(ready)  # READY already: the second commit loses
    assert not m.mark_ready(version("7"))  # no such version
    assert not m.mark_ready(version("2", state="UPLOADING"))

    assert m.delete_version("m", "2")
    assert not m.delete_version("m", "2")
    assert m.get_version("m", "2") is None
    assert [v.version for v in m.list_versions("m")] == ["10", "1"]
    assert m.put_version(version("2"))  # a deleted version may be created again


def test_model_versions_are_keyed_by_their_number(other_backend: Stores) -> None:
    m = other_backend.models
    assert m.put_version(version("1"))
    assert not m.put_version(version("01"))  # the same version
    got = m.get_version("m", "001")
    assert got is not None and got.version == "1"
    assert m.delete_version("m", "01")
    assert m.list_versions("m") == []


def test_model_name_race_has_one_owner(other_backend: Stores) -> None:
    m = other_backend.models
    owners = race(8, lambda i: m.claim_name("m", f"t{i}", float(i)))
    assert len(set(owners)) == 1 and m.owner("m") == owners[0]


def test_deployments_replace(other_backend: Stores) -> None:
    m = other_backend.models
    assert m.get_deployment("m") is None
    assert m.list_deployments() == {}
    m.put_deployment("m", {"replicas": 1}, 1.0)
    m.put_deployment("m", {"replicas": 2, "regions": ["eu"]}, 2.0)
    m.put_deployment("n", {"replicas": 0}, 3.0)
    assert m.get_deployment("m") == {"replicas": 2, "regions": ["eu"]}
    assert m.list_deployments() == {"m": {"replicas": 2, "regions": ["eu"]}, "n": {"replicas": 0}}
    m.claim_name("m", "acme", 1.0)
    assert m.list_names() == [("m", "acme")]  # deployments are not model names


def test_plan_revision_fences_writers(other_backend: Stores) -> None:
    m = other_backend.models
    assert m.get_plan() is None
    assert not m.save_plan({"a": 1}, 5.0, 1)  # no plan yet: only revision 0 may write
    assert m.save_plan({"a": 1}, 10.0, 0)
    assert not m.save_plan({"a": 2}, 11.0, 0)  # someone wrote revision 1 already
    plan = m.get_plan()
    assert plan is not None
    assert (plan.revision, plan.planned_at, plan.doc) == (1, 10.0, {"a": 1})
    assert m.save_plan({"a": 3}, 12.5, 1)
    assert not m.save_plan({"a": 4}, 13.0, 1)
    assert not m.save_plan({"a": 5}, 13.0, 7)
    plan = m.get_plan()
    assert plan is not None
    assert (plan.revision, plan.planned_at, plan.doc) == (2, 12.5, {"a": 3})


def test_plan_race_has_one_winner(other_backend: Stores) -> None:
    m = other_backend.models
    wins = race(8, lambda i: m.save_plan({"by": i}, float(i), 0))
    assert wins.count(True) == 1
    plan = m.get_plan()
    assert plan is not None
    assert plan.revision == 1
    assert plan.doc == {"by": wins.index(True)}


# ---------------------------------------------------------------------- auth
def soon(s: float = 3600.0) -> float:
    return round(time.time() + s, 3)


def api_key(key_id: str = "k1") -> ApiKeyRecord:
    return ApiKeyRecord(
        id=key_id, tenant="acme", role="admin", name="ci", secret_hash="ab" * 32, created_at=1.5
    )


def refresh(token_id: str = "r1", family: str = "f1") -> RefreshRecord:  # noqa: S107
    return RefreshRecord(
        id=token_id,
        secret_hash="cd" * 32,
        family=family,
        key_id="k1",
        tenant="acme",
        role="admin",
        expires_at=soon(),
    )


def test_api_keys(other_backend: Stores) -> None:
    a = other_backend.auth
    assert a.find_api_key("k1") is None
    a.save_api_key(api_key())
    with pytest.raises(Conflict):
        a.save_api_key(replace(api_key(), tenant="globex"))
    assert a.find_api_key("k1") == api_key()
    assert a.revoke_api_key("k1")
    assert a.revoke_api_key("k1")  # idempotent
    assert not a.revoke_api_key("k2")
    assert a.find_api_key("k1") == replace(api_key(), revoked=True)
    assert a.find_api_key("k2") is None
    newer = replace(api_key(), id="k0", created_at=api_key().created_at + 5, tenant="globex")
    a.save_api_key(newer)
    a.save_join_token(JoinTokenRecord("h" * 64, "eu", {}, soon()))  # not a key: not listed
    assert a.list_api_keys() == [replace(api_key(), revoked=True), newer]  # oldest first


def test_join_tokens_are_listed_and_deleted(other_backend: Stores) -> None:
    a = other_backend.auth
    first = JoinTokenRecord("a" * 64, "eu", {"gpu": "a100"}, soon())
    second = JoinTokenRecord("b" * 64, "us", {}, soon() - 10)
    a.save_join_token(first)
    a.save_join_token(second)
    a.save_api_key(api_key())  # not a join token: not listed
    assert a.list_join_tokens() == [second, first]  # soonest expiry first
    assert a.delete_join_token("b" * 64)
    assert not a.delete_join_token("b" * 64)
    assert a.find_join_token("b" * 64) is None and a.list_join_tokens() == [first]


def test_refresh_tokens_are_used_once(other_backend: Stores) -> None:
    a = other_backend.auth
    rec = refresh()
    assert a.find_refresh_token("r1") is None
    a.save_refresh_token(rec)
    with pytest.raises(Conflict):
        a.save_refresh_token(refresh(family="f2"))
    assert a.find_refresh_token("r1") == rec
    assert a.mark_refresh_used("r1")
    assert not a.mark_refresh_used("r1")  # a reuse
    assert not a.mark_refresh_used("nope")
    assert a.find_refresh_token("r1") == replace(rec, used=True)


def test_refresh_reuse_race_has_one_winner(other_backend: Stores) -> None:
    a = other_backend.auth
    a.save_refresh_token(refresh())
    wins = race(16, lambda _: a.mark_refresh_used("r1"))
    assert wins.count(True) == 1


def test_family_revocation(other_backend: Stores) -> None:
    a = other_backend.auth
    assert not a.family_revoked("f1")
    a.revoke_family("f1", soon())
    a.revoke_family("f1", soon(10))  # again: still revoked
    assert a.family_revoked("f1")
    assert not a.family_revoked("f2")


def test_join_tokens(other_backend: Stores) -> None:
    a = other_backend.auth
    rec = JoinTokenRecord("h" * 64, "eu-west", {"gpu": "h100", "pool": "a"}, soon())
    assert a.find_join_token(rec.token_hash) is None
    a.save_join_token(rec)
    with pytest.raises(Conflict):
        a.save_join_token(replace(rec, region="us"))
    assert a.find_join_token(rec.token_hash) == rec


def test_signing_key_first_writer_wins(other_backend: Stores) -> None:
    a = other_backend.auth
    assert a.ensure_signing_key("first") == "first"
    assert a.ensure_signing_key("second") == "first"
    a.ping()


def test_signing_key_race_has_one_winner(other_backend: Stores) -> None:
    a = other_backend.auth
    keys = race(16, lambda i: a.ensure_signing_key(f"key-{i}"))
    assert len(set(keys)) == 1
    assert keys[0] in {f"key-{i}" for i in range(16)}
    assert a.ensure_signing_key("late") == keys[0]


def test_sqlite_purges_long_expired_tokens(other_sqlite_db: Database) -> None:
    clock = [1_000_000.0]
    a = SqliteAuthStore(other_sqlite_db, now=lambda: clock[0])
    old = replace(refresh("old"), expires_at=clock[0])
    a.save_refresh_token(old)
    a.save_join_token(JoinTokenRecord("j1", "eu", {}, clock[0]))
    clock[0] += sqlite_auth.PURGE_GRACE_S  # expired, but not long enough
    a.save_refresh_token(refresh("r2"))
    assert a.find_refresh_token("old") == old
    clock[0] += 1.0
    a.save_refresh_token(refresh("r3"))
    assert a.find_refresh_token("old") is None
    assert a.find_join_token("j1") is None
    assert a.find_refresh_token("r3") is not None


# ---------------------------------------------------------------------- runners & nonces
def runner(runner_id: str = "run_1", registered_at: float = 100.25) -> RunnerRecord:
    return RunnerRecord(
        id=runner_id,
        name="gpu-box",
        region="eu-west",
        labels={"gpu": "h100"},
        secret="s3cr3t",
        registered_at=registered_at,
        config={"max_jobs": 2, "drain": False, "ratio": 0.5, "mode": "fast"},
    )


def test_runner_create_find_list(other_backend: Stores) -> None:
    r = other_backend.runners
    assert r.find_runner("run_1") is None
    assert r.list_runners() == []
    # revoked / last_heartbeat_at of the new record are not stored
    r.create_runner(replace(runner(), revoked=True, last_heartbeat_at=5.0))
    with pytest.raises(Conflict):
        r.create_runner(replace(runner(), name="other"))
    assert r.find_runner("run_1") == runner()
    r.create_runner(runner("run_0", registered_at=300.0))
    r.create_runner(runner("run_2", registered_at=50.0))
    assert [x.id for x in r.list_runners()] == ["run_2", "run_1", "run_0"]
    r.ping()


def test_heartbeat_and_config_need_a_live_runner(other_backend: Stores) -> None:
    r = other_backend.runners
    gpus = [{"index": 0, "name": "H100", "memory_mb": 81920}]
    models = [{"name": "m", "version": "1", "state": "READY"}]
    assert r.record_heartbeat("nope", 1.0, gpus, models, {}, []) is None
    assert r.merge_config("nope", {"drain": True}) is None
    assert r.merge_config("nope", {}) is None
    r.create_runner(runner())

    beat = r.record_heartbeat("run_1", 200.5, gpus, models, {"ready": True}, ["job_1"])
    expected = replace(
        runner(),
        last_heartbeat_at=200.5,
        gpus=gpus,
        models=models,
        triton={"ready": True},
        running_jobs=["job_1"],
    )
    assert beat == expected
    assert r.find_runner("run_1") == expected

    merged = r.merge_config("run_1", {"drain": True, "max_jobs": 4, "label": None})
    config = {"max_jobs": 4, "drain": True, "ratio": 0.5, "mode": "fast", "label": "None"}
    assert merged == replace(expected, config=config)
    assert r.merge_config("run_1", {}) == merged

    assert r.revoke_runner("run_1")
    assert r.revoke_runner("run_1")  # idempotent
    assert not r.revoke_runner("nope")
    assert r.record_heartbeat("run_1", 300.0, [], [], {}, []) is None
    assert r.merge_config("run_1", {"drain": False}) is None
    revoked = replace(merged, revoked=True)
    assert r.find_runner("run_1") == revoked  # nothing written after the revocation
    assert r.merge_config("run_1", {}) == revoked  # an empty patch reads, revoked or not


def test_config_patches_of_different_fields_all_stick(other_backend: Stores) -> None:
    r = other_backend.runners
    r.create_runner(replace(runner(), config={}))
    race(8, lambda i: r.merge_config("run_1", {f"f{i}": i}))
    got = r.find_runner("run_1")
    assert got is not None and got.config == {f"f{i}": i for i in range(8)}


def test_nonce_once_until_it_expires(other_backend: Stores) -> None:
    n = other_backend.nonces
    assert n.remember_nonce("run_1#a", 1000.0, 1100.9)
    assert not n.remember_nonce("run_1#a", 1000.0, 1200.0)  # a replay
    assert n.remember_nonce("run_2#a", 1000.0, 1100.0)  # keys are independent
    assert not n.remember_nonce("run_1#a", 1100.0, 1200.0)  # expires_at == now: not expired
    assert not n.remember_nonce("run_1#a", 1100.99, 1200.0)  # whole seconds (1100 < 1100)
    assert n.remember_nonce("run_1#a", 1101.0, 1300.0)  # expired: replaceable
    assert not n.remember_nonce("run_1#a", 1250.0, 1400.0)  # the new entry holds until 1300


def test_nonce_race_has_one_winner(other_backend: Stores) -> None:
    n = other_backend.nonces
    wins = race(16, lambda _: n.remember_nonce("run_1#x", 1000.0, 1060.0))
    assert wins.count(True) == 1


def test_sqlite_nonce_purge_is_bounded(other_sqlite_db: Database) -> None:
    n = SqliteNonceStore(other_sqlite_db)
    for i in range(100):
        assert n.remember_nonce(f"k{i}", 1000.0, 1010.0)

    def count() -> int:
        return int(other_sqlite_db.read().execute("SELECT COUNT(*) FROM nonces").fetchone()[0])

    assert count() == 100
    assert n.remember_nonce("fresh", 1011.0, 1100.0)
    assert count() == 101 - sqlite_runners.NONCE_PURGE_BATCH
    assert n.remember_nonce("fresh2", 1011.0, 1100.0)
    assert count() == 2
    n.ping()


# ---------------------------------------------------------------------- webhooks
def delivery(job_id: str = "job_1", event: str = "job.completed", shard: int = 0) -> Delivery:
    return Delivery(
        job_id=job_id,
        event=event,
        msg_id=f"msg_{job_id}_{event}",
        tenant="acme",
        url="https://hooks.example.com/x",
        body='{"id":"job_1"}',
        state="pending",
        attempts=0,
        created_at=1000.0,
        index_shard=shard,
    )


def attempt_rec(n: int, code: int | None = 500, error: str | None = None) -> AttemptRecord:
    return AttemptRecord(
        job_id="ignored",
        event="ignored",
        msg_id="ignored",
        attempt=n,
        at=1000.0 + n,
        duration_ms=12,
        status_code=code,
        error=error,
    )


def test_webhook_enqueue_once_and_due_order(other_backend: Stores) -> None:
    w = other_backend.webhooks
    d = delivery()
    assert w.get("job_1", "job.completed") is None
    assert w.enqueue(d, 1000.0)
    assert not w.enqueue(replace(d, url="https://other"), 900.0)  # exists: nothing written
    sk = "0000001000000#job_1#job.completed"
    assert w.get("job_1", "job.completed") == replace(d, next_attempt_at=1000.0, index_sk=sk)
    assert w.enqueue(delivery("job_2"), 1000.5)
    assert w.enqueue(delivery("job_0"), 1002.0)
    assert w.enqueue(delivery("job_3", shard=1), 999.0)

    assert w.due(0, 999.9, 10) == []
    assert w.due(0, 1000.0, 10) == [DueRef("job_1", "job.completed", 0, sk)]
    refs = w.due(0, 1002.0, 10)
    assert [(r.job_id, r.shard) for r in refs] == [("job_1", 0), ("job_2", 0), ("job_0", 0)]
    assert [r.job_id for r in w.due(0, 1002.0, 2)] == ["job_1", "job_2"]
    assert [r.job_id for r in w.due(1, 1002.0, 10)] == ["job_3"]
    w.ping()


def test_webhook_claim_finish_timeline(other_backend: Stores) -> None:
    w = other_backend.webhooks
    w.enqueue(delivery(), 1000.0)
    (ref,) = w.due(0, 1000.0, 10)
    seen = w.get(ref.job_id, ref.event)
    assert seen is not None

    claim = w.claim(ref, seen, "T1", 1030.0)
    assert claim is not None
    lease_sk = "0000001030000#job_1#job.completed"
    assert claim.lease_sk == lease_sk
    assert claim.delivery == replace(
        seen, state="sending", attempts=1, claim="T1", index_sk=lease_sk, next_attempt_at=1030.0
    )
    assert w.get("job_1", "job.completed") == claim.delivery
    assert w.claim(ref, seen, "T2", 1031.0) is None  # the entry is gone: a second claim loses
    assert w.due(0, 1029.0, 10) == []
    assert w.due(0, 1030.0, 10) == [DueRef("job_1", "job.completed", 0, lease_sk)]

    forged = replace(claim, token="T9")
    assert not w.finish(forged, attempt_rec(1), "pending", 1060.0)  # wrong token: nothing
    assert w.get("job_1", "job.completed") == claim.delivery
    assert w.attempts("job_1") == []

    assert w.finish(claim, attempt_rec(1, 500, "x" * 1500), "pending", 1060.0)
    next_sk = "0000001060000#job_1#job.completed"
    after = w.get("job_1", "job.completed")
    assert after == replace(
        claim.delivery, state="pending", claim=None, index_sk=next_sk, next_attempt_at=1060.0
    )
    assert w.due(0, 2000.0, 10) == [DueRef("job_1", "job.completed", 0, next_sk)]
    assert w.attempts("job_1") == [
        AttemptRecord(
            job_id="job_1",
            event="job.completed",
            msg_id="msg_job_1_job.completed",
            attempt=1,
            at=1001.0,
            duration_ms=12,
            status_code=500,
            error="x" * 1000,
        )
    ]
    assert not w.finish(claim, attempt_rec(1), "delivered", None)  # the claim is spent

    (ref2,) = w.due(0, 1060.0, 10)
    assert after is not None
    assert w.claim(ref2, replace(after, attempts=0), "T3", 1090.0) is None  # stale attempts
    claim2 = w.claim(ref2, after, "T3", 1090.0)
    assert claim2 is not None
    assert claim2.delivery.attempts == 2
    assert w.finish(claim2, attempt_rec(2, 200), "delivered", None)
    final = w.get("job_1", "job.completed")
    assert final is not None
    assert (final.state, final.attempts, final.claim, final.index_sk, final.next_attempt_at) == (
        "delivered",
        2,
        None,
        None,
        None,
    )
    assert w.due(0, 5000.0, 10) == []
    assert [(a.attempt, a.status_code, a.error) for a in w.attempts("job_1")] == [
        (1, 500, "x" * 1000),
        (2, 200, None),
    ]
    # a stale entry (e.g. put back by hand) no longer matches the delivery
    assert w.claim(ref2, final, "T4", 2000.0) is None


def test_webhook_dead_worker_lease_is_reclaimed(other_backend: Stores) -> None:
    w = other_backend.webhooks
    w.enqueue(delivery(), 1000.0)
    (ref,) = w.due(0, 1000.0, 10)
    seen = w.get(ref.job_id, ref.event)
    assert seen is not None
    dead = w.claim(ref, seen, "T1", 1030.0)
    assert dead is not None
    # the worker died; once the lease has run out, its entry is due again
    (lease_ref,) = w.due(0, 1030.0, 10)
    now_seen = w.get(lease_ref.job_id, lease_ref.event)
    assert now_seen == dead.delivery
    again = w.claim(lease_ref, now_seen, "T2", 1060.0)
    assert again is not None
    assert again.delivery.attempts == 2
    assert not w.finish(dead, attempt_rec(1), "delivered", None)  # the dead claim is fenced
    assert w.finish(again, attempt_rec(2, 204), "delivered", None)
    got = w.get("job_1", "job.completed")
    assert got is not None
    assert (got.state, got.claim) == ("delivered", None)


def test_webhook_claim_race_has_one_winner(other_backend: Stores) -> None:
    w = other_backend.webhooks
    w.enqueue(delivery(), 1000.0)
    (ref,) = w.due(0, 1000.0, 10)
    seen = w.get(ref.job_id, ref.event)
    assert seen is not None
    claims = race(8, lambda i: w.claim(ref, seen, f"T{i}", 1030.0))
    won = [c for c in claims if c is not None]
    assert len(won) == 1
    stored = w.get("job_1", "job.completed")
    assert stored is not None
    assert stored.claim == won[0].token
    assert stored.attempts == 1


def test_webhook_drop_stale_and_listings(other_backend: Stores) -> None:
    w = other_backend.webhooks
    w.enqueue(delivery(event="job.running"), 1000.0)
    w.enqueue(delivery(event="job.completed"), 1001.0)
    w.enqueue(delivery("job_2"), 1001.0)
    assert [d.event for d in w.deliveries("job_1")] == ["job.completed", "job.running"]
    assert w.deliveries("job_9") == []
    assert w.attempts("job_9") == []

    refs = w.due(0, 1001.0, 10)
    assert [(r.job_id, r.event) for r in refs] == [
        ("job_1", "job.running"),
        ("job_1", "job.completed"),
        ("job_2", "job.completed"),
    ]
    w.drop_stale(refs[2])
    w.drop_stale(refs[2])  # unconditional: dropping twice is fine
    assert w.due(0, 1001.0, 10) == refs[:2]
    got = w.get("job_2", "job.completed")
    assert got is not None
    assert got.index_sk == refs[2].sk  # the delivery is untouched
    assert w.claim(refs[2], got, "T", 1100.0) is None  # its entry is gone

    for ref, n in ((refs[0], 1), (refs[1], 1), (refs[0], 2)):
        seen = w.get(ref.job_id, ref.event)
        assert seen is not None
        (entry,) = (r for r in w.due(0, 5000.0, 10) if r.event == ref.event)
        claim = w.claim(entry, seen, f"T{n}", 1100.0 + n)
        assert claim is not None
        assert w.finish(claim, attempt_rec(n), "pending", 1200.0 + n)
    assert [(a.event, a.attempt) for a in w.attempts("job_1")] == [
        ("job.completed", 1),
        ("job.running", 1),
        ("job.running", 2),
    ]


def secret(version: int = 1, **kw: Any) -> SecretRecord:
    return SecretRecord(
        tenant="acme", current=f"whsec_{version}", version=version, created_at=5.0, **kw
    )


def test_webhook_secrets_versioned(other_backend: Stores) -> None:
    s = other_backend.secrets
    assert s.get("acme") is None
    assert not s.replace(secret(2), 1)  # nothing to replace
    assert s.create(secret())
    assert not s.create(secret(9))  # the first secret wins
    assert s.get("acme") == secret()
    rotated = secret(2, previous="whsec_1", previous_until=99.5)
    assert not s.replace(rotated, 2)
    assert s.replace(rotated, 1)
    assert s.get("acme") == rotated
    assert not s.replace(secret(3), 1)  # a concurrent rotation lost
    assert s.replace(secret(3, previous="whsec_2"), 2)  # previous without until is dropped
    assert s.get("acme") == secret(3)
    assert s.get("globex") is None


def test_webhook_secret_create_race_has_one_winner(other_backend: Stores) -> None:
    s = other_backend.secrets
    wins = race(8, lambda i: s.create(secret(i + 1)))
    assert wins.count(True) == 1
    assert s.get("acme") == secret(wins.index(True) + 1)


def test_sqlite_webhook_log_expires(other_sqlite_db: Database) -> None:
    w = SqliteWebhookStore(other_sqlite_db)
    assert w.enqueue(delivery(), 1000.0)
    (ref,) = w.due(0, 1000.0, 10)
    seen = w.get(ref.job_id, ref.event)
    assert seen is not None
    claim = w.claim(ref, seen, "T", 1030.0)
    assert claim is not None
    assert w.finish(claim, attempt_rec(1), "failed", None)
    later = replace(delivery("job_2"), created_at=1000.0 + sqlite_webhooks.LOG_TTL_S)
    assert w.enqueue(later, later.created_at)
    assert w.get("job_1", "job.completed") is not None  # expires_at == now: kept
    later = replace(delivery("job_3"), created_at=1001.0 + sqlite_webhooks.LOG_TTL_S)
    assert w.enqueue(later, later.created_at)
    assert w.get("job_1", "job.completed") is None
    assert w.attempts("job_1") == []
    assert w.get("job_2", "job.completed") is not None


# ---------------------------------------------------------------------- issue 12: limits, rotation
def test_join_token_uses_are_counted_and_limited(other_backend: Stores) -> None:
    a = other_backend.auth
    now = time.time()
    rec = JoinTokenRecord("c" * 64, "eu", {"pool": "a"}, now + 600, max_uses=2)
    a.save_join_token(rec)
    assert a.find_join_token(rec.token_hash) == rec
    first = a.claim_join_token(rec.token_hash, now)
    assert first == replace(rec, uses=1, last_used_at=now)
    assert a.claim_join_token(rec.token_hash, now + 1) == replace(rec, uses=2, last_used_at=now + 1)
    assert a.claim_join_token(rec.token_hash, now + 2) is None  # used up
    assert a.find_join_token(rec.token_hash) == replace(rec, uses=2, last_used_at=now + 1)
    assert a.claim_join_token("d" * 64, now) is None  # unknown
    expired = JoinTokenRecord("e" * 64, "eu", {}, now - 1, max_uses=5)
    a.save_join_token(expired)
    assert a.claim_join_token(expired.token_hash, now) is None
    assert a.list_join_tokens()[-1].uses == 2


def test_last_join_token_use_race_has_one_winner(other_backend: Stores) -> None:
    a = other_backend.auth
    now = time.time()
    a.save_join_token(JoinTokenRecord("f" * 64, "eu", {}, now + 600, max_uses=3))
    won = race(12, lambda i: a.claim_join_token("f" * 64, now))
    assert sum(w is not None for w in won) == 3
    assert sorted(w.uses for w in won if w is not None) == [1, 2, 3]


def test_api_key_rotation_keeps_the_old_hash_until_a_time(other_backend: Stores) -> None:
    a = other_backend.auth
    a.save_api_key(api_key())
    old = api_key().secret_hash
    assert not a.rotate_api_key("k1", "00" * 32, "11" * 32, 50.0)  # not the current hash
    assert not a.rotate_api_key("nope", old, "11" * 32, 50.0)
    assert a.rotate_api_key("k1", old, "11" * 32, 50.0)
    assert a.find_api_key("k1") == replace(
        api_key(), secret_hash="11" * 32, previous_secret_hash=old, previous_valid_until=50.0
    )
    wins = race(8, lambda i: a.rotate_api_key("k1", "11" * 32, f"{i:02d}" * 32, 60.0))
    assert wins.count(True) == 1
    a.revoke_api_key("k1")
    current = a.find_api_key("k1")
    assert current is not None
    assert not a.rotate_api_key("k1", current.secret_hash, "22" * 32, 70.0)  # revoked


def test_runner_secret_offer_and_promotion(other_backend: Stores) -> None:
    r = other_backend.runners
    assert r.offer_secret("run_1", "new") is None
    r.create_runner(runner())
    offered = r.offer_secret("run_1", "new")
    assert offered == replace(runner(), pending_secret="new")
    assert r.offer_secret("run_1", "newer") == offered  # one offer at a time
    assert r.promote_secret("run_1", "other", 10.0, 20.0) is None
    promoted = r.promote_secret("run_1", "new", 10.0, 20.0)
    assert promoted == replace(
        runner(),
        secret="new",
        previous_secret="s3cr3t",
        previous_valid_until=20.0,
        secret_set_at=10.0,
    )
    assert r.find_runner("run_1") == promoted
    assert r.promote_secret("run_1", "new", 11.0, 21.0) is None  # promoted already
    wins = race(6, lambda i: r.promote_secret("run_1", "x", 1.0, 2.0))
    assert wins == [None] * 6
    r.offer_secret("run_1", "third")
    assert [
        w is not None for w in race(6, lambda i: r.promote_secret("run_1", "third", 30.0, 40.0))
    ].count(True) == 1
    r.revoke_runner("run_1")
    assert r.offer_secret("run_1", "fourth") is None


def test_runner_keeps_its_join_token_and_secret_start(other_backend: Stores) -> None:
    r = other_backend.runners
    rec = replace(runner(), join_token="jt_0123456789abcdef", secret_set_at=99.5)
    r.create_runner(rec)
    assert r.find_runner("run_1") == rec
    assert r.list_runners() == [rec]
