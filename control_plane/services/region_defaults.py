"""Region defaults of tenants and API keys: what an admin sets (``default_region``,
``regions_allowed``) and what a request naming no region gets from it (docs/regions.md).

Precedence of a request's region fields: the request → its API key's record → its tenant's
stored record → the tenant's entry in the ``tenant_regions`` setting (a seed: a stored tenant
record replaces it whole) → the deployment's defaults. Limits only narrow: a request cannot
widen its key's or tenant's ``regions_allowed``, and a key's limit is intersected with its
tenant's (a key never gets a region its tenant may not use).

Hot path: the records are read from the limits store at most every ``REGION_CACHE_S`` per
replica (one listing of every record), never per request; an admin's change on this replica
applies at once, on other replicas within ``REGION_CACHE_S``. A failed re-read keeps the
previous snapshot (and retries on the next request).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from gpufleet.wire import RegionDefaultsList, RegionDefaultsSpec, RegionDefaultsView

from control_plane import clock
from control_plane.errors import InvalidRequest, NotFound, Unavailable
from control_plane.services.principal import Principal
from control_plane.services.regions import REGION_COORDS, RegionDefaults, check_region
from control_plane.storage.protocols_auth import ApiKeyRecord
from control_plane.storage.protocols_limits import LimitsStore, RegionDefaultsRecord

log = logging.getLogger(__name__)

REGION_CACHE_S = 5.0  # how long a replica trusts the region defaults it read


@dataclass(frozen=True)
class CallerRegions:
    """What a caller's key and tenant give a request: preferred-region candidates in order
    (key's, tenant's) and the hard limit (empty: none)."""

    preferred: tuple[str, ...] = ()
    allowed: tuple[str, ...] = ()


NO_LIMIT = CallerRegions()


def _merge(key: RegionDefaults | None, tenant: RegionDefaults | None) -> CallerRegions:
    """A key's defaults over its tenant's; limits intersect (InvalidRequest when they no
    longer overlap: an admin narrowed the tenant after setting the key)."""
    t = tenant or RegionDefaults()
    k = key or RegionDefaults()
    allowed = t.regions_allowed
    if k.regions_allowed:
        allowed = tuple(
            r for r in k.regions_allowed if not t.regions_allowed or r in t.regions_allowed
        )
        if not allowed:
            raise InvalidRequest(
                f"regions_allowed: this API key's regions {list(k.regions_allowed)} and its "
                f"tenant's {list(t.regions_allowed)} do not overlap (an admin sets them: "
                "PUT /v1/admin/api-keys/{id}/regions)",
                field="regions_allowed",
            )
    preferred = tuple(
        r
        for r in (k.default_region, t.default_region)
        if r is not None and (not allowed or r in allowed)
    )
    return CallerRegions(preferred, allowed)


class RegionDefaultsService:
    """Stored region defaults of tenants and keys, the settings' seeds, and the admin API."""

    def __init__(
        self,
        store: LimitsStore | None,
        seeds: dict[str, RegionDefaults],
        *,
        find_key: Callable[[str], ApiKeyRecord | None] | None = None,
        known_regions: Callable[[], Iterable[str]] = lambda: (),
        cache_s: float = REGION_CACHE_S,
        monotonic: Callable[[], float] = time.monotonic,
        now: Callable[[], float] = clock.now,
    ) -> None:
        self._store = store
        self._seeds = dict(seeds)
        self._find_key = find_key
        self._known_regions = known_regions
        self._cache_s = cache_s
        self._monotonic = monotonic
        self._now = now
        self._lock = threading.Lock()
        self._reading = threading.Lock()
        self._at = -math.inf if store is not None else math.inf
        self._tenants: dict[str, RegionDefaultsRecord] = {}
        self._keys: dict[str, RegionDefaultsRecord] = {}
        self._merged: dict[tuple[str, str | None], CallerRegions] = {}

    # ------------------------------------------------------------------ hot path
    def fresh(self) -> bool:
        """The next :meth:`caller` reads no store."""
        return self._monotonic() - self._at < self._cache_s

    def _refresh(self, *, force: bool = False) -> None:
        if self._store is None or (not force and self.fresh()):
            return
        loaded = self._at != -math.inf
        # one re-read at a time: while it runs, other requests use the previous snapshot
        if not self._reading.acquire(blocking=force or not loaded):
            return
        try:
            if not force and self.fresh():
                return
            records = self._store.list_region_defaults()
            tenants = {r.name: r for r in records if r.scope == "tenant"}
            keys = {r.name: r for r in records if r.scope == "key"}
            with self._lock:  # installed before the next read may start: never older data
                self._tenants, self._keys, self._merged = tenants, keys, {}
                self._at = self._monotonic()
        except Unavailable:
            if force or not loaded:
                raise
            log.warning("region defaults not re-read; the previous ones stay", exc_info=True)
            with self._lock:
                self._at = self._monotonic()  # retry after another cache_s, not per request
        finally:
            self._reading.release()

    def _tenant_defaults(self, tenant: str) -> tuple[RegionDefaults | None, str]:
        rec = self._tenants.get(tenant)
        if rec is not None:
            return RegionDefaults(rec.default_region, rec.regions_allowed), "stored"
        seed = self._seeds.get(tenant)
        return (seed, "settings") if seed is not None else (None, "none")

    def _key_defaults(self, key_id: str | None) -> RegionDefaults | None:
        rec = self._keys.get(key_id) if key_id is not None else None
        return None if rec is None else RegionDefaults(rec.default_region, rec.regions_allowed)

    def caller(self, tenant: str, key_id: str | None) -> CallerRegions:
        """What the key ``key_id`` (None: not an API key) of ``tenant`` gives a request."""
        self._refresh()
        hit = self._merged.get((tenant, key_id))
        if hit is not None:
            return hit
        merged = _merge(self._key_defaults(key_id), self._tenant_defaults(tenant)[0])
        if len(self._merged) > 100_000:
            self._merged = {}
        self._merged[(tenant, key_id)] = merged
        return merged

    # ------------------------------------------------------------------ admin
    def _require_store(self) -> LimitsStore:
        if self._store is None:
            raise Unavailable("region defaults cannot be stored on this control plane")
        return self._store

    def _check(self, spec: RegionDefaultsSpec) -> RegionDefaults:
        """Region names known here, no duplicates, default_region inside regions_allowed."""
        known = set(REGION_COORDS) | set(self._known_regions())
        for s in self._seeds.values():
            known.update(s.regions_allowed)
            known.update([s.default_region] if s.default_region else [])
        fields = [("default_region", spec.default_region)] if spec.default_region else []
        fields += [(f"regions_allowed[{i}]", r) for i, r in enumerate(spec.regions_allowed)]
        for field, region in fields:
            check_region(region, field)
            if region not in known:
                raise InvalidRequest(
                    f"{field}: {region!r} is not a region this control plane knows (neither a "
                    "cloud region of its latency table nor the region of a registered "
                    "runner; GET /v1/regions lists them)",
                    field=field,
                )
        if len(set(spec.regions_allowed)) != len(spec.regions_allowed):
            raise InvalidRequest(
                "regions_allowed: a region is listed twice", field="regions_allowed"
            )
        if (
            spec.default_region is not None
            and spec.regions_allowed
            and spec.default_region not in spec.regions_allowed
        ):
            raise InvalidRequest(
                f"default_region: {spec.default_region!r} is not among regions_allowed "
                f"{spec.regions_allowed}",
                field="default_region",
            )
        return RegionDefaults(spec.default_region, tuple(spec.regions_allowed))

    def _key(self, key_id: str) -> ApiKeyRecord:
        found = self._find_key(key_id) if self._find_key is not None else None
        if found is None:
            raise NotFound(f"API key {key_id!r} not found")
        return found

    @staticmethod
    def _spec(c: CallerRegions) -> RegionDefaultsSpec:
        return RegionDefaultsSpec.model_construct(
            default_region=c.preferred[0] if c.preferred else None,
            regions_allowed=list(c.allowed),
        )

    def _tenant_view(self, tenant: str) -> RegionDefaultsView:
        d, source = self._tenant_defaults(tenant)
        rec = self._tenants.get(tenant)
        return RegionDefaultsView(
            scope="tenant",
            tenant=tenant,
            default_region=d.default_region if d else None,
            regions_allowed=list(d.regions_allowed) if d else [],
            source=source,  # type: ignore[arg-type]
            effective=self._spec(_merge(None, d)),
            updated_at=clock.iso(rec.updated_at) if rec else None,
        )

    def _key_view(self, key: ApiKeyRecord) -> RegionDefaultsView:
        rec = self._keys.get(key.id)
        own = self._key_defaults(key.id)
        try:
            effective = self._spec(_merge(own, self._tenant_defaults(key.tenant)[0]))
        except InvalidRequest:  # limits that no longer overlap: nothing is allowed
            effective = RegionDefaultsSpec.model_construct(default_region=None, regions_allowed=[])
        return RegionDefaultsView(
            scope="key",
            tenant=key.tenant,
            key_id=key.id,
            default_region=own.default_region if own else None,
            regions_allowed=list(own.regions_allowed) if own else [],
            source="stored" if rec else "none",
            effective=effective,
            updated_at=clock.iso(rec.updated_at) if rec else None,
        )

    def list_all(self, p: Principal) -> RegionDefaultsList:
        p.require("admin")
        self._refresh(force=True)
        tenants = sorted(set(self._tenants) | set(self._seeds))
        keys = []
        for key_id in sorted(self._keys):
            found = self._find_key(key_id) if self._find_key is not None else None
            if found is not None:
                keys.append(self._key_view(found))
        return RegionDefaultsList(tenants=[self._tenant_view(t) for t in tenants], keys=keys)

    def get_tenant(self, p: Principal, tenant: str) -> RegionDefaultsView:
        p.require("admin")
        self._refresh(force=True)
        return self._tenant_view(tenant)

    def put_tenant(self, p: Principal, tenant: str, spec: RegionDefaultsSpec) -> RegionDefaultsView:
        """Set a tenant's region defaults (replacing its ``tenant_regions`` seed)."""
        p.require("admin")
        d = self._check(spec)
        self._require_store().put_region_defaults(
            RegionDefaultsRecord("tenant", tenant, d.default_region, d.regions_allowed, self._now())
        )
        self._refresh(force=True)
        return self._tenant_view(tenant)

    def delete_tenant(self, p: Principal, tenant: str) -> RegionDefaultsView:
        """Back to the ``tenant_regions`` seed (or none)."""
        p.require("admin")
        self._require_store().delete_region_defaults("tenant", tenant)
        self._refresh(force=True)
        return self._tenant_view(tenant)

    def get_key(self, p: Principal, key_id: str) -> RegionDefaultsView:
        p.require("admin")
        key = self._key(key_id)
        self._refresh(force=True)
        return self._key_view(key)

    def put_key(self, p: Principal, key_id: str, spec: RegionDefaultsSpec) -> RegionDefaultsView:
        """Set an API key's region defaults; its limit must stay inside its tenant's."""
        p.require("admin")
        key = self._key(key_id)
        d = self._check(spec)
        self._refresh(force=True)
        tenant_d = self._tenant_defaults(key.tenant)[0] or RegionDefaults()
        limit = tenant_d.regions_allowed
        if limit:
            for i, r in enumerate(d.regions_allowed):
                if r not in limit:
                    raise InvalidRequest(
                        f"regions_allowed[{i}]: {r!r} is outside the regions of the key's "
                        f"tenant {key.tenant!r} ({list(limit)})",
                        field=f"regions_allowed[{i}]",
                    )
            if d.default_region is not None and d.default_region not in limit:
                raise InvalidRequest(
                    f"default_region: {d.default_region!r} is outside the regions of the "
                    f"key's tenant {key.tenant!r} ({list(limit)})",
                    field="default_region",
                )
        self._require_store().put_region_defaults(
            RegionDefaultsRecord("key", key_id, d.default_region, d.regions_allowed, self._now())
        )
        self._refresh(force=True)
        return self._key_view(key)

    def delete_key(self, p: Principal, key_id: str) -> RegionDefaultsView:
        """The key back on its tenant's defaults."""
        p.require("admin")
        key = self._key(key_id)
        self._require_store().delete_region_defaults("key", key_id)
        self._refresh(force=True)
        return self._key_view(key)
