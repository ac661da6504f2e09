"""Tenant quotas: max queued, max running, submit rate (token bucket), the weight of a tenant
on a shared model pool, and the highest priority an API key may submit at.

Hot-path costs (submit and lease run ~1000 jobs/s on one replica):

- quotas and key limits are read from the store at most every ``QUOTA_CACHE_S`` per replica
  (one listing each, every tenant at once), never per submit;
- the submit-rate token buckets live in memory, one per tenant **per replica** (N replicas
  admit up to N x the rate; set the rate per replica, see docs/quotas.md);
- queued/running counts: every transition this replica commits is counted in memory (a
  subscriber of the transition bus, ``services/transitions.py``); the deltas are added to
  the store's per-tenant counters (``LimitsStore.add_load``) and every tenant's counters
  are read back at most every ``LOAD_CACHE_S``. A count is the last read plus this
  replica's transitions since, so it is exact on one replica and lags by at most
  ``LOAD_CACHE_S`` across replicas.

Refusals: ``RateLimited`` (429, ``Retry-After``, ``details.quota`` = ``max_queued`` or
``submit_rate``) and ``Forbidden`` (403, ``details.field`` = ``priority``) for a priority above
the key's limit. ``max_running`` never refuses a submit: jobs of a tenant at its limit wait
queued and the lease passes them over (``running_room``).
"""

from __future__ import annotations

import math
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gpufleet.wire import KeyLimits, KeyLimitsSpec, QuotaList, QuotaSpec, QuotaView

from control_plane import clock
from control_plane.errors import Forbidden, RateLimited
from control_plane.services.principal import Principal
from control_plane.settings import Settings
from control_plane.storage.protocols import JobRecord
from control_plane.storage.protocols_limits import LimitsStore, QuotaRecord, TenantLoad

QUOTA_CACHE_S = 5.0  # how long a replica trusts the quotas and key limits it read
LOAD_CACHE_S = 1.0  # how long a replica trusts the tenants' counters it read
MAX_QUEUED_RETRY_S = 5


@dataclass(frozen=True)
class Quota:
    """A tenant's effective quotas (its record over the settings' defaults); 0: no limit."""

    max_queued: int
    max_running: int
    submit_rate: float
    submit_burst: int
    weight: float


@dataclass
class _Bucket:
    tokens: float
    at: float


class QuotaService:
    """Quota checks for submits and leases, the load counters, and the admin operations."""

    def __init__(
        self,
        settings: Settings,
        store: LimitsStore | None,
        monotonic: Callable[[], float] = time.monotonic,
        now: Callable[[], float] = clock.now,
    ) -> None:
        self._settings = settings
        self._store = store
        self._monotonic = monotonic
        self._now = now
        self._lock = threading.Lock()
        self._quotas: dict[str, QuotaRecord] = {}
        self._key_limits: dict[str, int] = {}
        self._quotas_at = -math.inf
        self._effective: dict[str, Quota] = {}  # built from _quotas on first use
        self._buckets: dict[str, _Bucket] = {}
        self._loads: dict[str, TenantLoad] = {}
        self._loads_at = -math.inf
        self._since: Counter[tuple[str, str]] = Counter()  # local deltas since the last read
        self._pending: Counter[tuple[str, str]] = Counter()  # local deltas not yet stored

    # ------------------------------------------------------------------ effective values
    def _fresh_quotas(self) -> None:
        if self._monotonic() - self._quotas_at < QUOTA_CACHE_S:
            return
        if self._store is not None:
            quotas = {q.tenant: q for q in self._store.list_quotas()}
            keys = self._store.key_priorities()
        else:
            quotas, keys = dict(self._quotas), dict(self._key_limits)
        with self._lock:
            self._quotas, self._key_limits = quotas, keys
            self._effective = {}
            self._quotas_at = self._monotonic()

    def quota(self, tenant: str, *, cached_only: bool = False) -> Quota:
        """The effective quotas of ``tenant``."""
        if not cached_only:
            self._fresh_quotas()
        hit = self._effective.get(tenant)
        if hit is not None:
            return hit
        rec = self._quotas.get(tenant)
        s = self._settings

        def pick(own: Any, default: Any) -> Any:
            return default if own is None else own

        quota = Quota(
            max_queued=pick(rec and rec.max_queued, s.tenant_max_queued),
            max_running=pick(rec and rec.max_running, s.tenant_max_running),
            submit_rate=pick(rec and rec.submit_rate, s.tenant_submit_rate),
            submit_burst=pick(rec and rec.submit_burst, s.tenant_submit_burst),
            weight=pick(rec and rec.weight, s.tenant_weight),
        )
        if len(self._effective) > 100_000:
            self._effective = {}
        self._effective[tenant] = quota
        return quota

    def max_priority(self, key_id: str) -> int:
        """The highest priority the key ``key_id`` may submit at."""
        self._fresh_quotas()
        return self._key_limits.get(key_id, self._settings.default_max_priority)

    # ------------------------------------------------------------------ load counters
    def job_transition(self, job: JobRecord, _view: Any, previous: str | None) -> None:
        """Transition-bus subscriber: count the job in or out of queued and running."""
        deltas: list[tuple[str, int]] = []
        if previous in ("QUEUED", "RUNNING"):
            deltas.append((previous, -1))
        if job.status in ("QUEUED", "RUNNING") and job.status != previous:
            deltas.append((job.status, 1))
        elif job.status == previous:
            deltas.clear()
        with self._lock:
            for status, d in deltas:
                key = (job.tenant, status)
                self._since[key] += d
                self._pending[key] += d

    def _flush(self, pending: Counter[tuple[str, str]]) -> None:
        if self._store is None or not pending:
            return
        try:
            for tenant in sorted({t for t, _ in pending}):
                self._store.add_load(
                    tenant, pending[(tenant, "QUEUED")], pending[(tenant, "RUNNING")]
                )
        except Exception:
            # Retried at the next flush (a timeout that did commit may then count twice:
            # the counters drift by that batch, as the queue depth counters would).
            with self._lock:
                self._pending.update(pending)
            raise

    def flush(self) -> None:
        """Add this replica's counted transitions to the store's counters."""
        with self._lock:
            pending, self._pending = self._pending, Counter()
        self._flush(pending)

    def refresh_loads(self, *, force: bool = False) -> None:
        """Store this replica's counted transitions and re-read every tenant's counters,
        when the last read is ``LOAD_CACHE_S`` old."""
        if not force and self._monotonic() - self._loads_at < LOAD_CACHE_S:
            return
        with self._lock:
            pending, self._pending = self._pending, Counter()
            mark = Counter(self._since)  # every delta so far: in the store once flushed
        self._flush(pending)
        loads = self._store.loads() if self._store is not None else {}
        with self._lock:
            if self._store is not None:
                self._since.subtract(mark)  # deltas counted during the read stay
            self._loads = loads
            self._loads_at = self._monotonic()

    def load(self, tenant: str, *, cached_only: bool = False) -> TenantLoad:
        """Queued and running jobs of ``tenant`` (see the module docstring)."""
        if not cached_only:
            self.refresh_loads()
        stored = self._loads.get(tenant, TenantLoad())
        with self._lock:
            q = stored.queued + self._since[(tenant, "QUEUED")]
            r = stored.running + self._since[(tenant, "RUNNING")]
        return TenantLoad(max(0, q), max(0, r))

    def loads(self) -> dict[str, TenantLoad]:
        """Every tenant's queued and running jobs (for /metrics)."""
        self.refresh_loads()
        tenants = set(self._loads) | {t for t, _ in self._since}
        return {t: self.load(t, cached_only=True) for t in sorted(tenants)}

    # ------------------------------------------------------------------ submit checks
    def check_submit(self, p: Principal, priorities: list[int]) -> None:
        """Refuse a submit of ``len(priorities)`` jobs: priority over the key's limit (403),
        submit rate (429) or max queued (429); a submit that passes takes its tokens."""
        top = self.max_priority(p.sub)
        for i, priority in enumerate(priorities):
            if priority > top:
                field = "priority" if len(priorities) == 1 else f"jobs[{i}].priority"
                raise Forbidden(
                    f"{field} {priority} is above {top}, the highest priority this API key "
                    "may use (an admin sets it: PUT /v1/admin/api-keys/{id}/limits)",
                    details={"field": field, "max_priority": top},
                )
        quota = self.quota(p.tenant)
        count = len(priorities)
        if quota.max_queued > 0:
            queued = self.load(p.tenant).queued
            if queued + count > quota.max_queued:
                raise RateLimited(
                    f"tenant {p.tenant!r} has {queued} jobs queued; its quota max_queued is "
                    f"{quota.max_queued}",
                    retry_after=MAX_QUEUED_RETRY_S,
                    details={"quota": "max_queued", "limit": quota.max_queued},
                )
        if quota.submit_rate > 0:
            self._take_tokens(p.tenant, quota, count)

    def _take_tokens(self, tenant: str, quota: Quota, count: int) -> None:
        burst = max(quota.submit_burst, 1, math.ceil(quota.submit_rate))
        t = self._monotonic()
        with self._lock:
            bucket = self._buckets.get(tenant)
            if bucket is None:
                bucket = self._buckets[tenant] = _Bucket(tokens=float(burst), at=t)
            bucket.tokens = min(float(burst), bucket.tokens + (t - bucket.at) * quota.submit_rate)
            bucket.at = t
            if bucket.tokens >= count:
                bucket.tokens -= count
                return
            short = count - bucket.tokens
        wait = short / quota.submit_rate if count <= burst else math.inf
        message = (
            f"tenant {tenant!r} submits faster than its quota submit_rate "
            f"({quota.submit_rate:g} jobs/s, burst {burst})"
        )
        if count > burst:
            message += f"; a batch of {count} jobs is over the burst and never fits"
        raise RateLimited(
            message,
            retry_after=max(1, math.ceil(wait)) if math.isfinite(wait) else 60,
            details={"quota": "submit_rate", "limit": quota.submit_rate, "burst": burst},
        )

    # ------------------------------------------------------------------ lease
    def running_room(self, tenant: str) -> int | None:
        """How many more jobs of ``tenant`` may start now (None: no limit); cached values
        only (the lease calls it under a lock; ``refresh_loads`` runs before)."""
        limit = self.quota(tenant, cached_only=True).max_running
        if limit <= 0:
            return None
        return max(0, limit - self.load(tenant, cached_only=True).running)

    def waiting_reason(self, tenant: str) -> str | None:
        """Why a QUEUED job of ``tenant`` waits, when a quota holds it (cached values)."""
        if self.running_room(tenant) != 0:
            return None
        limit = self.quota(tenant, cached_only=True).max_running
        return f"tenant {tenant!r} is at its max_running quota ({limit} jobs running)"

    def weight(self, tenant: str) -> float:
        """The tenant's share of a shared model pool, relative to the others (cached)."""
        return max(self.quota(tenant, cached_only=True).weight, 1e-6)

    def before_lease(self) -> None:
        """Refresh what ``running_room`` and ``weight`` read (outside the lease's lock)."""
        self._fresh_quotas()
        self.refresh_loads()

    # ------------------------------------------------------------------ admin
    def _view(self, tenant: str) -> QuotaView:
        q = self.quota(tenant)
        rec = self._quotas.get(tenant)
        load = self.load(tenant)
        return QuotaView(
            tenant=tenant,
            max_queued=q.max_queued,
            max_running=q.max_running,
            submit_rate=q.submit_rate,
            submit_burst=q.submit_burst,
            weight=q.weight,
            queued=load.queued,
            running=load.running,
            own=QuotaSpec(
                max_queued=rec.max_queued if rec else None,
                max_running=rec.max_running if rec else None,
                submit_rate=rec.submit_rate if rec else None,
                submit_burst=rec.submit_burst if rec else None,
                weight=rec.weight if rec else None,
            ),
            updated_at=clock.iso(rec.updated_at) if rec else None,
        )

    def _invalidate(self) -> None:
        with self._lock:
            self._quotas_at = -math.inf
            self._effective = {}

    def my_quota(self, p: Principal) -> QuotaView:
        """The caller's tenant's quotas and usage (any role)."""
        p.require("jobs:read")
        return self._view(p.tenant)

    def get_quota(self, p: Principal, tenant: str) -> QuotaView:
        p.require("admin")
        return self._view(tenant)

    def list_quotas(self, p: Principal) -> QuotaList:
        """Every tenant with its own quotas or with jobs counted (admin)."""
        p.require("admin")
        self._fresh_quotas()
        tenants = set(self._quotas) | set(self.loads())
        s = self._settings
        defaults = QuotaSpec(
            max_queued=s.tenant_max_queued,
            max_running=s.tenant_max_running,
            submit_rate=s.tenant_submit_rate,
            submit_burst=s.tenant_submit_burst,
            weight=s.tenant_weight,
        )
        return QuotaList(defaults=defaults, tenants=[self._view(t) for t in sorted(tenants)])

    def put_quota(self, p: Principal, tenant: str, spec: QuotaSpec) -> QuotaView:
        """Set a tenant's own quotas (admin); a field left out (null) takes the default."""
        p.require("admin")
        rec = QuotaRecord(
            tenant=tenant, updated_at=self._now(), **spec.model_dump(exclude={"api_version"})
        )
        if self._store is not None:
            self._store.put_quota(rec)
        with self._lock:
            self._quotas[tenant] = rec
            self._buckets.pop(tenant, None)
        self._invalidate()
        return self._view(tenant)

    def delete_quota(self, p: Principal, tenant: str) -> QuotaView:
        """Back to the defaults (admin)."""
        p.require("admin")
        if self._store is not None:
            self._store.delete_quota(tenant)
        with self._lock:
            self._quotas.pop(tenant, None)
            self._buckets.pop(tenant, None)
        self._invalidate()
        return self._view(tenant)

    def set_key_limits(self, p: Principal, key_id: str, limits: KeyLimitsSpec) -> KeyLimits:
        """Set (or, with null, remove) the highest priority an API key may use (admin)."""
        p.require("admin")
        if self._store is not None:
            self._store.put_key_priority(key_id, limits.max_priority)
        with self._lock:
            if limits.max_priority is None:
                self._key_limits.pop(key_id, None)
            else:
                self._key_limits[key_id] = limits.max_priority
        self._invalidate()
        return KeyLimits(key_id=key_id, max_priority=self.max_priority(key_id))

    def get_key_limits(self, p: Principal, key_id: str) -> KeyLimits:
        p.require("admin")
        return KeyLimits(key_id=key_id, max_priority=self.max_priority(key_id))
