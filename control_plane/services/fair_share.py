"""Fair leasing across tenants on a shared model pool: stride scheduling (deficit round robin
with one job as the quantum, weighted).

Within a tenant, jobs go in claim order (priority, then FIFO: the queue's own order). Across
tenants, each pool (the set of models a lease offers) keeps a *pass* per tenant: taking one
of a tenant's jobs adds ``1 / weight`` to it, and the next job comes from the tenant with the
lowest pass that has a candidate. Over time each tenant with work queued gets jobs in
proportion to its weight, whatever priorities the others use. A tenant that comes back
after being idle starts at the pool's current pass (the last one served), so idling banks no
credit. A tenant at its ``max_running`` quota is passed over (its jobs stay queued).

State is per replica and in memory (a restart starts everyone equal); each replica is fair
on the leases it serves. Only the queue heads a replica has read are candidates (the first
``QueueHeads`` depth of each shard, at least 100): a tenant whose jobs all sit behind
another tenant's deeper backlog waits until that backlog shrinks to the read depth; the
per-tenant ``max_queued`` quota bounds how deep a backlog can be (docs/quotas.md).
"""

from __future__ import annotations

import heapq
import threading
from collections import deque
from collections.abc import Callable, Hashable

from control_plane.storage.protocols import QueueEntry

MAX_POOLS = 1024  # distinct offers remembered; more (unusual) forget them all


class FairShare:
    """Stride scheduling of queue entries across tenants; see the module docstring."""

    def __init__(
        self,
        weight: Callable[[str], float],
        room: Callable[[str], int | None],
    ) -> None:
        self._weight = weight
        self._room = room
        self._lock = threading.Lock()
        # pool -> (tenant -> pass, the pass of the last job taken)
        self._pools: dict[Hashable, tuple[dict[str, float], list[float]]] = {}

    def pick(self, pool: Hashable, entries: list[QueueEntry], want: int) -> list[QueueEntry]:
        """Up to ``want`` of ``entries`` (given in claim order), fairly across tenants."""
        if want <= 0 or not entries:
            return []
        groups: dict[str, deque[QueueEntry]] = {}
        for e in entries:
            groups.setdefault(e.tenant, deque()).append(e)
        rooms = {t: self._room(t) for t in groups}
        steps = {t: 1.0 / self._weight(t) for t in groups}
        with self._lock:
            if pool not in self._pools:
                if len(self._pools) >= MAX_POOLS:
                    self._pools.clear()
                self._pools[pool] = ({}, [0.0])
            passes, vtime = self._pools[pool]
            if len(groups) == 1:  # one tenant (the common case): its jobs in queue order
                [(tenant, group)] = groups.items()
                room = rooms[tenant]
                taken = list(group)[: want if room is None else min(want, room)]
                if taken:
                    start = max(passes.get(tenant, vtime[0]), vtime[0])
                    vtime[0] = start + (len(taken) - 1) * steps[tenant]
                    passes[tenant] = start + len(taken) * steps[tenant]
                return taken
            heap: list[tuple[float, str]] = []
            for tenant in groups:
                if rooms[tenant] == 0:
                    continue
                start = max(passes.get(tenant, vtime[0]), vtime[0])  # no credit from idling
                passes[tenant] = start
                heap.append((start, tenant))
            heapq.heapify(heap)
            out: list[QueueEntry] = []
            while heap and len(out) < want:
                at, tenant = heapq.heappop(heap)
                out.append(groups[tenant].popleft())
                vtime[0] = at
                passes[tenant] = at + steps[tenant]
                room = rooms[tenant]
                if room is not None:
                    rooms[tenant] = room = room - 1
                if groups[tenant] and room != 0:
                    heapq.heappush(heap, (passes[tenant], tenant))
        return out
