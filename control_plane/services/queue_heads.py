"""A per-replica read-ahead of queue heads, so a lease does not query every shard each time.

A read takes the first ``depth`` entries of a shard; leases then take candidates from that
read-ahead, which is re-read in the background when it is ``ttl_s`` old. Taking removes the
entry, so concurrent leases in one replica spread over different jobs instead of racing for
the head. It is only a hint: each claim is still a conditional write on the job item, so an
entry claimed meanwhile by another replica just loses the race. A shard read empty is
trusted for ``empty_ttl_s`` only (shorter than a long poll's re-read interval, so a poll
round still reads it; so is a shard whose read held all of it once leases here took every
entry of that read, nothing queued here since), and not at all once this replica queues a
job (``queued``): the long polls woken by a local submit read at once, and an idle
runner's next long poll does not re-read every empty shard (a job queued by another replica
meanwhile is then seen by a poll round, as one queued during a poll is). One-shot leases
(``wait_s`` 0) always read. Priorities are strict within a read; a job submitted to another
replica may wait up to ``ttl_s`` behind older cached ones.

Why: on moto a Query scans the whole table (about 0.1 ms per stored queue entry: ~1 s per
query at 10k queued), so reading four shards per lease made its cost grow with the queue;
DynamoDB reads only the page, but a lease that never waits for a read is faster there too.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from control_plane.storage.protocols import QueueEntry, QueueStore

log = logging.getLogger(__name__)

TAKEN_MEMORY_S = 30.0  # far longer than a claim takes


@dataclass
class _Head:
    fetched: float
    entries: list[QueueEntry] = field(default_factory=list)
    refreshing: bool = False
    full: bool = False  # the read returned ``depth`` entries: the shard holds more
    generation: int = -1  # of local queueing when the read began (see ``take``)


class QueueHeads:
    """Read-ahead of the heads of queue shards, shared by the leases of one replica.

    A shard with no cached entries is read before the lease goes on (a new job is seen at
    once). A shard whose cached entries are older than the TTL, or down to half a read, is
    re-read in the background while leases keep taking from what is cached
    (stale-while-revalidate), so no lease waits for a refresh it does not need. The TTL
    grows to four times the last read's duration, so reads take at most about a quarter of
    the time, however slow one is (on moto a Query's cost grows with the table).
    """

    def __init__(
        self,
        store: QueueStore,
        pool: ThreadPoolExecutor,
        ttl_s: float = 1.0,
        depth: int = 100,
        *,
        parallel: bool = True,
        empty_ttl_s: float = 0.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self._monotonic = monotonic  # ages the cache (a test's fake clock moves it)
        self._pool = pool
        # Missing shards read in parallel on ``pool`` (network stores); else one by one here.
        self._parallel = parallel
        self._ttl_s = ttl_s
        self._depth = depth
        self._heads: dict[str, _Head] = {}
        self._lock = threading.Lock()
        self._last_read_s = 0.0
        # Entries handed out recently, by (sort key, token): a read that raced their claim must
        # not bring them back. A requeued job keeps its sort key but gets a new token.
        # (insertion order = time order: pruned from the front)
        self._taken: dict[tuple[str, str], float] = {}
        # Shards read empty: until when that read is trusted (see ``queued``).
        self._empty_ttl_s = empty_ttl_s
        self._empty_until: dict[str, float] = {}
        self._generation = 0  # of local queueing: a read that raced one marks nothing empty

    def queued(self, shard: str | None = None) -> None:
        """This replica queued a job (in ``shard``; None: any shard): its next lease reads."""
        with self._lock:
            self._generation += 1
            if shard is None:
                self._empty_until.clear()
            else:
                self._empty_until.pop(shard, None)

    def _ttl(self) -> float:
        return max(self._ttl_s, 4 * self._last_read_s)

    def _read(self, shard: str, depth: int) -> tuple[float, list[QueueEntry]]:
        t = self._monotonic()
        entries = self._store.head(shard, depth)
        done = self._monotonic()
        self._last_read_s = done - t
        return done, entries

    def _read_each(self, shards: list[str], depth: int) -> list[tuple[float, list[QueueEntry]]]:
        """``_read`` of each shard in turn, here (one clock reading between two reads)."""
        out: list[tuple[float, list[QueueEntry]]] = []
        start = self._monotonic()
        for shard in shards:
            entries = self._store.head(shard, depth)
            done = self._monotonic()
            self._last_read_s = done - start
            out.append((done, entries))
            start = done
        return out

    def _forget_taken(self, now: float) -> None:
        """Drop what was handed out more than ``TAKEN_MEMORY_S`` before ``now`` (lock held;
        once before installing reads)."""
        horizon = now - TAKEN_MEMORY_S
        taken = self._taken
        while taken:
            key = next(iter(taken))
            if taken[key] >= horizon:
                break
            del taken[key]

    def _install(
        self, shard: str, done: float, entries: list[QueueEntry], depth: int, generation: int
    ) -> None:
        """Cache a read (lock held; ``_forget_taken`` called), leaving out entries handed out
        since it may have begun."""
        self._heads[shard] = _Head(
            fetched=done,
            entries=[e for e in entries if (e.sk, e.token) not in self._taken] if entries else [],
            full=bool(entries) and len(entries) >= depth,
            generation=generation,
        )

    def _refresh_in_background(self, shard: str, depth: int) -> None:
        generation = self._generation
        try:
            done, entries = self._read(shard, depth)
        except Exception:
            with self._lock:
                head = self._heads.get(shard)
                if head is not None:
                    head.refreshing = False
            log.warning("background read of queue shard %s failed", shard, exc_info=True)
            return
        with self._lock:
            self._forget_taken(done)
            self._install(shard, done, entries, depth, generation)

    def take(
        self,
        shards: list[str],
        fits: Callable[[QueueEntry], bool],
        want: int,
        choose: Callable[[list[QueueEntry], int], list[QueueEntry]] | None = None,
        *,
        trust_empty: bool = True,
    ) -> list[QueueEntry]:
        """Up to ``want`` fitting entries of ``shards``, removed from the cache: the first in
        claim order (their opaque ``sk``s compare in claim order across a model's shards), or
        those ``choose(fitting entries in claim order, want)`` picks (fair leasing).
        ``trust_empty=False``: read every shard without cached entries (a one-shot lease)."""
        t = self._monotonic()
        depth = max(self._depth, want * 2)
        with self._lock:
            generation = self._generation
            empty = self._empty_until
            missing = [
                sh
                for sh in shards
                if (sh not in self._heads or not self._heads[sh].entries)
                and (not trust_empty or empty.get(sh, 0.0) <= t)
            ]
            heads = self._heads
            for sh in shards:
                if sh not in heads:  # (``in`` and ``[]``: no ``.get`` call per shard)
                    continue
                head = heads[sh]
                if (
                    head.entries
                    and not head.refreshing
                    and (
                        t - head.fetched > self._ttl()
                        or (head.full and len(head.entries) < depth // 2)
                    )
                ):
                    head.refreshing = True
                    self._pool.submit(self._refresh_in_background, sh, depth)
        if not missing:
            fresh = []
        elif self._parallel and len(missing) > 1:
            fresh = list(self._pool.map(lambda sh: self._read(sh, depth), missing))
            newest = max([done for done, _ in fresh])
        else:
            fresh = self._read_each(missing, depth)
            newest = fresh[-1][0]  # (read one after the other)
        with self._lock:
            if fresh:
                self._forget_taken(newest)
            for sh, (done, entries) in zip(missing, fresh, strict=True):
                if sh in heads and heads[sh].entries:
                    continue  # a background refresh installed newer entries meanwhile
                self._install(sh, done, entries, depth, generation)
                if not entries and self._empty_ttl_s > 0 and generation == self._generation:
                    empty[sh] = t + self._empty_ttl_s
            ordered = sorted(
                (e for sh in shards for e in self._heads[sh].entries if fits(e)),
                key=lambda e: e.sk,
            )
            found = ordered[:want] if choose is None else choose(ordered, want)
            for e in found:
                head = self._heads[e.shard]
                head.entries.remove(e)
                self._taken.pop((e.sk, e.token), None)  # re-added last: time order
                self._taken[(e.sk, e.token)] = t
                if (
                    not head.entries
                    and not head.full
                    and head.generation == self._generation
                    and self._empty_ttl_s > 0
                ):
                    # The read held the whole shard and nothing was queued here since: it is
                    # as empty as a read would find it now (the next long poll does not read
                    # it again; a job queued meanwhile elsewhere is seen by a poll round, as
                    # after an empty read).
                    empty[e.shard] = max(empty.get(e.shard, 0.0), head.fetched + self._empty_ttl_s)
        return found
