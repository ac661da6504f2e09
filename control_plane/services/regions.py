"""Where a job may run: its region policy, the region-to-region latency table, and the one
question leasing asks (:func:`region_eligible`: may a runner in region R take this job now?).

A job's **region policy** (``RegionPolicy``):

- ``preferred``: the region it should run in (``region`` of the request, else the API key's
  tenant default, else the deployment's, else none);
- ``allowed``: the hard limit (``regions_allowed``; empty = any region). A job never runs
  outside it, whatever waits; ``region`` must be one of them;
- ``spill_after_s``: how long it waits for a runner in ``preferred`` before it may go
  elsewhere. The other allowed regions where runners are live are ranked by latency from
  ``preferred`` (nearest first); the region of rank k becomes eligible once the job has been
  queued ``k * spill_after_s`` (the nearest after one delay, the next after two, ...).

The policy travels in the queue entry's ``region`` string (the queue's key schema is
unchanged): ``""`` = any region, a plain region name = pinned there (what older releases
wrote), else ``<preferred>|<allowed,comma-separated>|<spill_after_s>`` (:meth:`encode`).

Latency: a static table of cloud region locations seeds an estimate for every pair (great-circle
distance at fibre speed with a route factor); runners report their round-trip time to the
control plane in each heartbeat, and once a region has measurements they replace the estimate
for the pair (that region, the control plane's region). ``GET /v1/regions`` shows both.
Measurements are kept in memory per replica (an exponentially weighted average).
"""

from __future__ import annotations

import functools
import math
import re
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from gpufleet.wire import JobRequest

from control_plane.errors import InvalidRequest
from control_plane.storage.protocols_auth import RunnerRecord

REGION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")

# (latitude, longitude) of common cloud regions (public data-centre metro locations).
REGION_COORDS: dict[str, tuple[float, float]] = {
    # AWS
    "us-east-1": (38.9, -77.4),  # N. Virginia
    "us-east-2": (40.0, -83.0),  # Ohio
    "us-west-1": (37.4, -121.9),  # N. California
    "us-west-2": (45.8, -119.7),  # Oregon
    "ca-central-1": (45.5, -73.6),  # Montreal
    "sa-east-1": (-23.5, -46.6),  # Sao Paulo
    "eu-west-1": (53.3, -6.3),  # Ireland
    "eu-west-2": (51.5, -0.1),  # London
    "eu-west-3": (48.9, 2.4),  # Paris
    "eu-central-1": (50.1, 8.7),  # Frankfurt
    "eu-central-2": (47.4, 8.5),  # Zurich
    "eu-north-1": (59.3, 18.1),  # Stockholm
    "eu-south-1": (45.5, 9.2),  # Milan
    "me-central-1": (25.2, 55.3),  # UAE
    "af-south-1": (-33.9, 18.4),  # Cape Town
    "ap-south-1": (19.1, 72.9),  # Mumbai
    "ap-northeast-1": (35.7, 139.7),  # Tokyo
    "ap-northeast-2": (37.6, 127.0),  # Seoul
    "ap-northeast-3": (34.7, 135.5),  # Osaka
    "ap-southeast-1": (1.3, 103.8),  # Singapore
    "ap-southeast-2": (-33.9, 151.2),  # Sydney
    "ap-east-1": (22.3, 114.2),  # Hong Kong
    # Google Cloud
    "us-central1": (41.3, -95.9),  # Iowa
    "us-east1": (33.2, -80.0),  # South Carolina
    "us-east4": (39.0, -77.5),  # N. Virginia
    "us-west1": (45.6, -121.2),  # Oregon
    "europe-west1": (50.5, 3.8),  # Belgium
    "europe-west2": (51.5, -0.1),  # London
    "europe-west3": (50.1, 8.7),  # Frankfurt
    "europe-west4": (53.4, 6.8),  # Netherlands
    "europe-north1": (60.6, 27.0),  # Finland
    "asia-east1": (24.1, 120.7),  # Taiwan
    "asia-northeast1": (35.7, 139.7),  # Tokyo
    "asia-southeast1": (1.3, 103.8),  # Singapore
    "australia-southeast1": (-33.9, 151.2),  # Sydney
    # Azure
    "eastus": (37.4, -79.4),  # Virginia
    "westus2": (47.2, -119.9),  # Washington
    "westeurope": (52.4, 4.9),  # Netherlands
    "northeurope": (53.3, -6.3),  # Ireland
    "uksouth": (51.5, -0.1),  # London
    "germanywestcentral": (50.1, 8.7),  # Frankfurt
    "japaneast": (35.7, 139.7),  # Tokyo
    "southeastasia": (1.3, 103.8),  # Singapore
}

FIBRE_KM_PER_MS = 200.0  # light in fibre, one way
ROUTE_FACTOR = 1.5  # real paths are longer than the great circle
LOCAL_RTT_MS = 1.0  # within one region
UNKNOWN_RTT_MS = 1000.0  # a region with no coordinates and no measurement: ranked last
EWMA_WEIGHT = 0.2  # weight of a new RTT sample


def check_region(value: str, field: str) -> str:
    """``value`` when it is a usable region name, else InvalidRequest naming ``field``."""
    if not REGION_RE.match(value):
        raise InvalidRequest(
            f"{field}: {value!r} is not a region name (letters, digits, '.', '_', '-'; "
            "at most 64 characters)",
            field=field,
        )
    return value


def estimated_rtt_ms(a: str, b: str) -> float | None:
    """The round trip between two regions estimated from their locations (None: unknown)."""
    if a == b:
        return LOCAL_RTT_MS
    pa, pb = REGION_COORDS.get(a), REGION_COORDS.get(b)
    if pa is None or pb is None:
        return None
    lat1, lon1, lat2, lon2 = map(math.radians, (*pa, *pb))
    h = (
        math.sin((lat2 - lat1) / 2) ** 2
        + math.cos(lat1) * math.cos(lat2) * math.sin((lon2 - lon1) / 2) ** 2
    )
    km = 2 * 6371.0 * math.asin(math.sqrt(h))
    return round(LOCAL_RTT_MS + 2 * km * ROUTE_FACTOR / FIBRE_KM_PER_MS, 1)


@dataclass(frozen=True)
class RegionPolicy:
    """Where one job may run; see the module docstring."""

    preferred: str | None = None
    allowed: tuple[str, ...] = ()  # empty: any region
    spill_after_s: float = 0.0

    def permits(self, region: str | None) -> bool:
        """``region`` is inside the hard limit."""
        return not self.allowed or (region is not None and region in self.allowed)

    def encode(self) -> str:
        """The queue entry's ``region`` string (see the module docstring)."""
        if self.preferred is None and not self.allowed:
            return ""
        if self.preferred is not None and self.allowed == (self.preferred,):
            return self.preferred  # pinned: the legacy form
        spill = f"{self.spill_after_s:g}"
        return f"{self.preferred or ''}|{','.join(self.allowed)}|{spill}"

    @staticmethod
    @functools.lru_cache(maxsize=4096)
    def decode(text: str) -> RegionPolicy:
        if not text:
            return RegionPolicy()
        if "|" not in text:
            return RegionPolicy(text, (text,), 0.0)
        preferred, allowed, spill = text.split("|", 2)
        return RegionPolicy(
            preferred or None,
            tuple(a for a in allowed.split(",") if a),
            float(spill or 0),
        )

    @staticmethod
    def of_job(region: str | None, request: dict[str, Any], default_spill_s: float) -> RegionPolicy:
        """The policy of a stored job (``JobRecord.region`` and its ``request["placement"]``)."""
        placement = request.get("placement") or {}
        allowed = tuple(placement.get("regions_allowed") or ())
        if region is not None and not placement:
            return RegionPolicy(region, (region,), 0.0)  # a job stored by an older release
        spill = placement.get("spill_after_s")
        return RegionPolicy(region, allowed, float(default_spill_s if spill is None else spill))


def spill_rank(
    policy: RegionPolicy, region: str, live: Iterable[str], rtt: Callable[[str, str], float]
) -> int:
    """0 for the preferred region (or no preference), else the rank (1 = nearest) of
    ``region`` among the other allowed regions in ``live`` by latency from the preferred one."""
    if policy.preferred is None or region == policy.preferred:
        return 0
    pref = policy.preferred
    others = {r for r in live if r != pref and policy.permits(r)} | {region}
    order = sorted(others, key=lambda r: (rtt(pref, r), r))
    return order.index(region) + 1


def region_eligible(
    policy: RegionPolicy,
    region: str | None,
    queued_s: float,
    live: Iterable[str],
    rtt: Callable[[str, str], float],
) -> bool:
    """May a runner in ``region`` lease a job with ``policy`` that has been queued
    ``queued_s`` seconds? Never outside ``allowed``; the preferred region at once; the k-th
    nearest other allowed live region after ``k * spill_after_s``."""
    if not policy.permits(region):
        return False
    if policy.preferred is None or region == policy.preferred:
        return True
    if region is None:
        return False
    return queued_s >= spill_rank(policy, region, live, rtt) * policy.spill_after_s


def static_region_fits(entry_region: str, runner_region: str | None, queued_s: float) -> bool:
    """The lease filter without a region service: static latency estimates, and every other
    allowed region counted as live."""
    policy = RegionPolicy.decode(entry_region)

    def rtt(a: str, b: str) -> float:
        est = estimated_rtt_ms(a, b)
        return UNKNOWN_RTT_MS if est is None else est

    return region_eligible(policy, runner_region, queued_s, policy.allowed, rtt)


@dataclass(frozen=True)
class RegionDefaults:
    """Defaults of one tenant (settings ``tenant_regions``) or one deployment."""

    default_region: str | None = None
    regions_allowed: tuple[str, ...] = ()


class RegionService:
    """Region policies of requests, the latency table and the live regions of the fleet."""

    def __init__(
        self,
        *,
        default_spill_s: float,
        control_plane_region: str | None,
        tenant_defaults: dict[str, RegionDefaults],
        list_runners: Callable[[], list[RunnerRecord]],
        offline_after_s: float,
        deployment_defaults: Callable[[str], RegionDefaults | None] | None = None,
        cache_s: float = 2.0,
        now: Callable[[], float] = time.time,
        callers: Any = None,
    ) -> None:
        self.default_spill_s = default_spill_s
        self.control_plane_region = control_plane_region
        self._tenants = tenant_defaults
        self._list_runners = list_runners
        self._offline_after_s = offline_after_s
        self.deployment_defaults = deployment_defaults
        self._cache_s = cache_s
        self._now = now
        self._lock = threading.Lock()
        self._measured: dict[str, tuple[float, int, float]] = {}  # region -> (ewma, n, at)
        self._live: tuple[float, dict[str, int]] = (-math.inf, {})
        self._dep_cache: dict[str, tuple[float, RegionDefaults | None]] = {}
        # the stored defaults of tenants and API keys (services/region_defaults.py); None:
        # only ``tenant_defaults`` (the settings' ``tenant_regions``)
        self.callers: Any = callers

    # ------------------------------------------------------------------ requests
    def resolve(self, tenant: str, req: JobRequest, *, key_id: str | None = None) -> JobRequest:
        """``req`` with its region defaults filled in (request > API key > tenant >
        deployment) and checked: ``regions_allowed`` within the key's and tenant's limit,
        ``region`` within ``regions_allowed``. InvalidRequest names the field."""
        region, allowed = self.defaults(
            tenant, req.model, req.region, req.regions_allowed, key_id=key_id
        )
        if region == req.region and allowed == list(req.regions_allowed or []):
            return req
        return req.model_copy(update={"region": region, "regions_allowed": allowed or None})

    def defaults(
        self,
        tenant: str,
        model: str,
        region: str | None = None,
        regions_allowed: Sequence[str] | None = None,
        *,
        key_id: str | None = None,
    ) -> tuple[str | None, list[str]]:
        """(preferred region, allowed regions; empty = any) of a request of ``tenant`` (with
        the API key ``key_id``) for ``model`` that asked for ``region`` / ``regions_allowed``
        (see :meth:`resolve`)."""
        allowed = list(regions_allowed or [])
        if region is not None:
            check_region(region, "region")
        for i, r in enumerate(allowed):
            check_region(r, f"regions_allowed[{i}]")
        preferred, limit = self._caller(tenant, key_id)
        dep_d = self._deployment(model) or RegionDefaults()
        if limit:
            outside = [r for r in allowed if r not in limit]
            if outside:
                whose = "this API key and tenant" if key_id is not None else "this tenant"
                raise InvalidRequest(
                    f"regions_allowed: {outside} are outside the regions {whose} may use "
                    f"({list(limit)})",
                    field="regions_allowed",
                )
        if not allowed:
            allowed = list(limit) or list(dep_d.regions_allowed)
            if limit and dep_d.regions_allowed:
                narrowed = [r for r in dep_d.regions_allowed if r in limit]
                allowed = narrowed or list(limit)
        if region is None:
            for candidate in (*preferred, dep_d.default_region):
                if candidate is not None and (not allowed or candidate in allowed):
                    region = candidate
                    break
        elif allowed and region not in allowed:
            raise InvalidRequest(
                f"region: {region!r} is not among regions_allowed {allowed}", field="region"
            )
        return region, allowed

    def _caller(self, tenant: str, key_id: str | None) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """(preferred-region candidates, limit) from the caller's API key and tenant."""
        if self.callers is not None:
            c = self.callers.caller(tenant, key_id)
            return c.preferred, c.allowed
        t = self._tenants.get(tenant) or RegionDefaults()
        return ((t.default_region,) if t.default_region else ()), t.regions_allowed

    def _deployment(self, model: str) -> RegionDefaults | None:
        """The deployment's region defaults, read at most once per ``cache_s`` per model."""
        if self.deployment_defaults is None:
            return None
        t = time.monotonic()
        hit = self._dep_cache.get(model)
        if hit is not None and t - hit[0] < self._cache_s:
            return hit[1]
        found = self.deployment_defaults(model)
        if len(self._dep_cache) > 10_000:
            self._dep_cache.clear()
        self._dep_cache[model] = (t, found)
        return found

    def resolves_without_io(self, model: str) -> bool:
        """``resolve``/``defaults`` for ``model`` would read no store now (the event loop may
        call them directly)."""
        if self.callers is not None and not self.callers.fresh():
            return False
        if self.deployment_defaults is None:
            return True
        hit = self._dep_cache.get(model)
        return hit is not None and time.monotonic() - hit[0] < self._cache_s

    # ------------------------------------------------------------------ latency
    def observe_rtt(self, region: str, rtt_ms: float) -> None:
        """A runner in ``region`` measured ``rtt_ms`` to the control plane."""
        if not (0 <= rtt_ms < 60_000):
            return
        with self._lock:
            prev = self._measured.get(region)
            if prev is None:
                self._measured[region] = (rtt_ms, 1, self._now())
            else:
                ewma = prev[0] + EWMA_WEIGHT * (rtt_ms - prev[0])
                self._measured[region] = (ewma, prev[1] + 1, self._now())

    def measured_rtt_ms(self, region: str) -> float | None:
        hit = self._measured.get(region)
        return None if hit is None else round(hit[0], 1)

    def rtt_ms(self, a: str, b: str) -> float:
        """The latency used to rank regions: measured where the pair is (a region, the control
        plane's region) and that region has measurements, else the static estimate."""
        cp = self.control_plane_region
        if cp is not None and a != b and cp in (a, b):
            measured = self.measured_rtt_ms(b if a == cp else a)
            if measured is not None:
                return measured
        est = estimated_rtt_ms(a, b)
        return UNKNOWN_RTT_MS if est is None else est

    def source(self, a: str, b: str) -> str:
        cp = self.control_plane_region
        other = b if a == cp else a
        if cp is not None and a != b and cp in (a, b) and self.measured_rtt_ms(other) is not None:
            return "measured"
        return "static" if estimated_rtt_ms(a, b) is not None else "unknown"

    # ------------------------------------------------------------------ live regions
    def live_regions(self) -> dict[str, int]:
        """region -> number of runners that sent a heartbeat recently (cached ``cache_s``)."""
        t = time.monotonic()
        at, live = self._live
        if t - at < self._cache_s:
            return live
        now = self._now()
        counts: dict[str, int] = {}
        for r in self._list_runners():
            last = r.last_heartbeat_at
            if r.revoked or last is None or now - last > self._offline_after_s:
                continue
            counts[r.region] = counts.get(r.region, 0) + 1
        self._live = (t, counts)
        return counts

    # ------------------------------------------------------------------ leasing
    def fits(self, entry_region: str, runner_region: str | None, queued_s: float) -> bool:
        """The lease filter: may a runner in ``runner_region`` take a queue entry whose
        ``region`` string is ``entry_region`` after ``queued_s`` seconds queued?"""
        if not entry_region:
            return True
        policy = RegionPolicy.decode(entry_region)
        if policy.preferred is None or runner_region == policy.preferred:
            return policy.permits(runner_region)
        return region_eligible(policy, runner_region, queued_s, self.live_regions(), self.rtt_ms)

    def spill_plan(self, policy: RegionPolicy, queued_s: float) -> tuple[str, float] | None:
        """The next region the job may spill to and in how many seconds (None: none)."""
        if policy.preferred is None:
            return None
        live = self.live_regions()
        for region in sorted(
            (r for r in live if r != policy.preferred and policy.permits(r)),
            key=lambda r: (self.rtt_ms(policy.preferred or "", r), r),
        ):
            rank = spill_rank(policy, region, live, self.rtt_ms)
            return region, max(0.0, rank * policy.spill_after_s - queued_s)
        return None

    def waiting_reason(self, policy: RegionPolicy, queued_s: float) -> str | None:
        """Words for a job waiting on its region (None: the job has no preferred region)."""
        if policy.preferred is None:
            return None
        head = f"waiting for a runner in {policy.preferred}"
        if policy.allowed == (policy.preferred,):
            return f"{head} (pinned)"
        plan = self.spill_plan(policy, queued_s)
        if plan is None:
            limit = f" within {list(policy.allowed)}" if policy.allowed else ""
            return f"{head}; no other region{limit} has a live runner to spill to"
        where, left = plan
        if left <= 0:
            return f"{head}; may spill to {where} now"
        return f"{head}; may spill to {where} in {math.ceil(left)} s"

    # ------------------------------------------------------------------ views
    def table(self, extra: Sequence[str] = ()) -> dict[str, Any]:
        """``GET /v1/regions``: live regions, measurements and the pairwise table."""
        live = self.live_regions()
        names = sorted(
            set(live)
            | set(self._measured)
            | set(extra)
            | ({self.control_plane_region} if self.control_plane_region else set())
        )
        regions = [
            {
                "region": r,
                "live_runners": live.get(r, 0),
                "location": list(REGION_COORDS[r]) if r in REGION_COORDS else None,
                "rtt_to_control_plane_ms": self.measured_rtt_ms(r),
                "samples": self._measured.get(r, (0.0, 0, 0.0))[1],
            }
            for r in names
        ]
        pairs = []
        for i, a in enumerate(names):
            for b in names[i + 1 :]:
                est = estimated_rtt_ms(a, b)
                pairs.append(
                    {
                        "from_region": a,
                        "to_region": b,
                        "static_ms": est,
                        "measured_ms": self.rtt_ms(a, b)
                        if self.source(a, b) == "measured"
                        else None,
                        "rtt_ms": self.rtt_ms(a, b),
                        "source": self.source(a, b),
                    }
                )
        return {
            "control_plane_region": self.control_plane_region,
            "default_spill_after_s": self.default_spill_s,
            "regions": regions,
            "latency": pairs,
        }


def known_regions(settings: Any, stores: Any) -> set[str]:
    """Regions an admin may name besides the latency table's: those of registered runners
    (any status) and the control plane's own."""
    found = {r.region for r in stores.runners.list_runners()}
    if settings.control_plane_region:
        found.add(settings.control_plane_region)
    return found
