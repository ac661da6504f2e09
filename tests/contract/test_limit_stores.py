"""Contract of the limits store (tenant quotas, key priorities, tenant load counters) on the
embedded SQLite store and DynamoDB (moto over HTTP), and fair leasing across tenants on
DynamoDB (queue entries carry their tenant there too)."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

from control_plane.storage.dynamo_limits import DynamoLimitsStore
from control_plane.storage.protocols_limits import (
    LimitsStore,
    QuotaRecord,
    RegionDefaultsRecord,
    TenantLoad,
)
from control_plane.storage.sqlite.limits import SqliteLimitsStore
from tests.contract.fleet import job, lease, principal, push_model, services, succeed


@pytest.fixture
def limits(backend: str, request: pytest.FixtureRequest) -> LimitsStore:
    if backend == "sqlite":
        return SqliteLimitsStore(request.getfixturevalue("sqlite_db"))
    settings = request.getfixturevalue("settings")
    dynamodb = request.getfixturevalue("aws")[0]
    return DynamoLimitsStore(dynamodb, settings.table("capacity"))


def test_quotas_put_get_list_delete(limits: LimitsStore) -> None:
    assert limits.get_quota("acme") is None and limits.list_quotas() == []
    full = QuotaRecord("acme", 10, 2, 1.5, 3, 2.0, 100.0)
    limits.put_quota(full)
    limits.put_quota(QuotaRecord("beta", max_queued=5, updated_at=101.0))
    assert limits.get_quota("acme") == full
    assert limits.get_quota("beta") == QuotaRecord("beta", max_queued=5, updated_at=101.0)
    assert [q.tenant for q in limits.list_quotas()] == ["acme", "beta"]
    limits.put_quota(QuotaRecord("acme", weight=0.5, updated_at=102.0))  # replaces the record
    assert limits.get_quota("acme") == QuotaRecord("acme", weight=0.5, updated_at=102.0)
    assert limits.delete_quota("acme") and not limits.delete_quota("acme")
    assert [q.tenant for q in limits.list_quotas()] == ["beta"]


def test_key_priorities(limits: LimitsStore) -> None:
    assert limits.key_priorities() == {}
    limits.put_key_priority("key_a", 10)
    limits.put_key_priority("key_b", 0)
    limits.put_key_priority("key_a", 20)
    assert limits.key_priorities() == {"key_a": 20, "key_b": 0}
    limits.put_key_priority("key_a", None)
    limits.put_key_priority("key_zz", None)  # nothing to remove: fine
    assert limits.key_priorities() == {"key_b": 0}


def test_region_defaults_put_list_replace_delete(limits: LimitsStore) -> None:
    assert limits.list_region_defaults() == []
    eu = RegionDefaultsRecord("tenant", "acme", "eu-west-1", ("eu-west-1", "eu-central-1"), 10.0)
    key = RegionDefaultsRecord("key", "key_abc", None, ("eu-central-1",), 11.5)
    bare = RegionDefaultsRecord("tenant", "beta", "us-east-1", (), 12.0)
    for rec in (bare, key, eu):
        limits.put_region_defaults(rec)
    # ordered by (scope, name); a tenant and a key of the same name are two records
    limits.put_region_defaults(RegionDefaultsRecord("key", "acme", "x-1", ("x-1",), 13.0))
    assert limits.list_region_defaults() == [
        RegionDefaultsRecord("key", "acme", "x-1", ("x-1",), 13.0),
        key,
        eu,
        bare,
    ]
    # replaced whole; the order of regions_allowed is kept
    new_eu = RegionDefaultsRecord("tenant", "acme", None, ("eu-central-1", "eu-west-1"), 14.0)
    limits.put_region_defaults(new_eu)
    assert new_eu in limits.list_region_defaults() and eu not in limits.list_region_defaults()
    assert limits.delete_region_defaults("tenant", "acme")
    assert not limits.delete_region_defaults("tenant", "acme")
    assert not limits.delete_region_defaults("tenant", "key_abc")  # scope matters
    assert limits.delete_region_defaults("key", "acme")
    assert limits.list_region_defaults() == [key, bare]
    # the quotas of the same tenant are another record
    assert limits.get_quota("beta") is None and limits.list_quotas() == []


def test_load_counters_add_and_never_read_below_zero(limits: LimitsStore) -> None:
    assert limits.loads() == {}
    limits.add_load("acme", 3, 0)
    limits.add_load("acme", -1, 1)
    limits.add_load("beta", 0, 0)  # no write
    limits.add_load("gamma", -2, -1)
    assert limits.loads() == {"acme": TenantLoad(2, 1), "gamma": TenantLoad(0, 0)}


@pytest.mark.parametrize("backend", ["dynamo"])
def test_fair_leasing_on_dynamodb(backend: str, settings: Any, stores: Any) -> None:
    """One tenant floods at priority 100, another queues at 0: both get the runner half the
    time; the counters the quotas read are stored in DynamoDB."""
    jobs, models = services(settings, stores)
    push_model(models, principal("ops"))
    flood, small = principal("flood", "admin"), principal("small", "admin")
    jobs.submit_batch(flood, [job(priority=100, tags={"t": "f"}) for _ in range(16)])
    jobs.submit_batch(small, [job(priority=0, tags={"t": "s"}) for _ in range(6)])
    # the queued counts reach the store now, not only when a later read is due (1 s): a
    # fast run would otherwise net each tenant's deltas to zero before the first write
    jobs.quotas.refresh_loads(force=True)
    got: Counter[str] = Counter()
    for _ in range(6):
        for one in lease(jobs, max_jobs=2):
            got[jobs.get(principal("root", "admin"), one.id).tags["t"]] += 1
            succeed(jobs, one)
    assert got == {"f": 6, "s": 6}
    jobs.quotas.refresh_loads(force=True)
    assert stores.limits.loads() == {"flood": TenantLoad(10, 0), "small": TenantLoad(0, 0)}
