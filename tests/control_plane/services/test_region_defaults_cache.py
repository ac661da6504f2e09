"""RegionDefaultsService on the embedded store: the precedence of key, stored tenant and
settings seed; one store read per cache period however many requests; a failed re-read keeps
the previous snapshot (and is not retried per request); an admin's write applies at once."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from control_plane.errors import InvalidRequest, Unavailable
from control_plane.services.region_defaults import CallerRegions, RegionDefaultsService
from control_plane.services.regions import RegionDefaults
from control_plane.storage.protocols_limits import RegionDefaultsRecord
from control_plane.storage.sqlite import schema
from control_plane.storage.sqlite.db import Database
from control_plane.storage.sqlite.limits import SqliteLimitsStore

EU = ("eu-west-1", "eu-central-1")


class Store(SqliteLimitsStore):
    reads = 0
    down = False

    def list_region_defaults(self) -> list[RegionDefaultsRecord]:
        self.reads += 1
        if self.down:
            raise Unavailable("store down")
        return super().list_region_defaults()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    db = Database(tmp_path / "s.db")
    schema.migrate(db)
    yield Store(db)
    db.close()


class Clock:
    t = 100.0

    def __call__(self) -> float:
        return self.t


def test_precedence_and_one_read_per_cache_period(store: Store) -> None:
    clock = Clock()
    svc = RegionDefaultsService(
        store, {"acme": RegionDefaults("eu-west-1", EU)}, cache_s=5.0, monotonic=clock
    )
    assert svc.caller("acme", "key_a") == CallerRegions(("eu-west-1",), EU)  # the seed
    assert svc.caller("beta", None) == CallerRegions()
    store.put_region_defaults(RegionDefaultsRecord("tenant", "acme", "us-east-1", ()))
    store.put_region_defaults(RegionDefaultsRecord("key", "key_a", "eu-central-1", EU))
    for _ in range(1000):  # cached: the new records are not seen yet, and nothing is read
        assert svc.caller("acme", "key_a") == CallerRegions(("eu-west-1",), EU)
    assert store.reads == 1 and svc.fresh()
    clock.t += 5.0
    assert not svc.fresh()
    # the key's default first; the stored tenant record replaced the seed whole
    assert svc.caller("acme", "key_a") == CallerRegions(("eu-central-1",), EU)
    assert svc.caller("acme", "key_b") == CallerRegions(("us-east-1",), ())
    assert store.reads == 2
    # limits intersect; a tenant default outside the key's limit is skipped
    store.put_region_defaults(RegionDefaultsRecord("tenant", "acme", "eu-west-1", EU))
    store.put_region_defaults(RegionDefaultsRecord("key", "key_a", None, ("eu-central-1",)))
    clock.t += 5.0
    assert svc.caller("acme", "key_a") == CallerRegions((), ("eu-central-1",))
    store.put_region_defaults(RegionDefaultsRecord("tenant", "acme", None, ("us-east-1",)))
    clock.t += 5.0
    with pytest.raises(InvalidRequest) as err:
        svc.caller("acme", "key_a")
    assert err.value.field == "regions_allowed"


def test_a_failed_reread_keeps_the_snapshot(store: Store) -> None:
    clock = Clock()
    store.put_region_defaults(RegionDefaultsRecord("tenant", "acme", "eu-west-1", EU))
    svc = RegionDefaultsService(store, {}, cache_s=5.0, monotonic=clock)
    assert svc.caller("acme", None).allowed == EU
    store.down = True
    clock.t += 6.0
    for _ in range(100):
        assert svc.caller("acme", None).allowed == EU
    assert store.reads == 2  # one failed re-read, then the old snapshot for another period
    clock.t += 6.0
    store.down = False
    store.put_region_defaults(RegionDefaultsRecord("tenant", "acme", None, ()))
    assert svc.caller("acme", None) == CallerRegions()
    # the first read has nothing to fall back on
    cold = RegionDefaultsService(store, {}, monotonic=clock)
    store.down = True
    with pytest.raises(Unavailable):
        cold.caller("acme", None)


def test_no_store_reads_nothing() -> None:
    svc = RegionDefaultsService(None, {"acme": RegionDefaults(None, EU)})
    assert svc.fresh() and svc.caller("acme", "key_a") == CallerRegions((), EU)


def test_a_version_9_file_gains_the_region_defaults_table(tmp_path: Path) -> None:
    """Schema version 10 on a file written at version 9: its quotas stay, region defaults
    can be stored."""
    from control_plane.storage.protocols_limits import QuotaRecord

    db = Database(tmp_path / "old.db")
    try:
        nine = {v: steps for v, steps in schema.MIGRATIONS.items() if v <= 9}
        assert schema.migrate(db, nine) == 9
        old = SqliteLimitsStore(db)
        old.put_quota(QuotaRecord("acme", max_queued=5, updated_at=1.0))
        tables = {r[0] for r in db.read().execute("SELECT name FROM sqlite_master")}
        assert "region_defaults" not in tables
        assert schema.migrate(db) == 10 == schema.SCHEMA_VERSION
        store = SqliteLimitsStore(db)
        assert store.get_quota("acme") == QuotaRecord("acme", max_queued=5, updated_at=1.0)
        store.put_region_defaults(RegionDefaultsRecord("tenant", "acme", None, EU, 2.0))
        assert store.list_region_defaults() == [
            RegionDefaultsRecord("tenant", "acme", None, EU, 2.0)
        ]
    finally:
        db.close()
