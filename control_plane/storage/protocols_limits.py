"""Records and the store protocol of tenant limits: quotas per tenant, the highest priority
per API key, the queued/running counters per tenant that the quotas are checked against,
and the region defaults (``default_region`` / ``regions_allowed``) of tenants and API keys.

Adapters: ``dynamo_limits.py`` (items in the ``capacity`` table), ``sqlite/limits.py``; the
docstrings below are their contract (``tests/contract/test_limit_stores.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class QuotaRecord:
    """A tenant's own quotas; None in a field: the default from the settings."""

    tenant: str
    max_queued: int | None = None
    max_running: int | None = None
    submit_rate: float | None = None  # jobs per second (token bucket refill)
    submit_burst: int | None = None  # token bucket size
    weight: float | None = None  # share of a shared model pool relative to other tenants
    updated_at: float = 0.0


@dataclass(frozen=True)
class RegionDefaultsRecord:
    """Region defaults an admin set on a tenant (``scope = "tenant"``, ``name`` = tenant) or
    an API key (``scope = "key"``, ``name`` = key id); docs/regions.md."""

    scope: str  # "tenant" | "key"
    name: str
    default_region: str | None = None
    regions_allowed: tuple[str, ...] = ()  # empty: no limit
    updated_at: float = 0.0


REGION_SCOPES = ("tenant", "key")


@dataclass(frozen=True)
class TenantLoad:
    """Queued and running jobs of one tenant (sums of every replica's counted transitions)."""

    queued: int = 0
    running: int = 0


class LimitsStore(Protocol):
    """Quotas, key limits and per-tenant load counters.

    - ``put_quota``: create or replace a tenant's record; ``get_quota``: None when unset;
      ``delete_quota``: True when there was one; ``list_quotas``: every record, by tenant.
    - ``put_key_priority``: the highest priority an API key may submit at (None: remove the
      limit); ``key_priorities``: every key limit, ``{key_id: max_priority}``.
    - ``add_load``: atomic ``+=`` on a tenant's queued and running counters (0, 0: no write);
      ``loads``: every tenant's counters, each never below 0.
    - ``put_region_defaults``: create or replace the record of (scope, name);
      ``delete_region_defaults``: True when there was one; ``list_region_defaults``: every
      record, ordered by (scope, name); ``regions_allowed`` keeps its order.
    """

    def put_quota(self, rec: QuotaRecord) -> None: ...

    def get_quota(self, tenant: str) -> QuotaRecord | None: ...

    def delete_quota(self, tenant: str) -> bool: ...

    def list_quotas(self) -> list[QuotaRecord]: ...

    def put_key_priority(self, key_id: str, max_priority: int | None) -> None: ...

    def key_priorities(self) -> dict[str, int]: ...

    def add_load(self, tenant: str, queued: int, running: int) -> None: ...

    def loads(self) -> dict[str, TenantLoad]: ...

    def put_region_defaults(self, rec: RegionDefaultsRecord) -> None: ...

    def delete_region_defaults(self, scope: str, name: str) -> bool: ...

    def list_region_defaults(self) -> list[RegionDefaultsRecord]: ...
