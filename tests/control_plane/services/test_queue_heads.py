"""The per-replica read-ahead of queue heads (one piece, with an in-memory queue store)."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from control_plane.services.queue_heads import QueueHeads
from control_plane.storage.protocols import QueueEntry
from tests.helpers.clock import FakeClock

SHARD = "add_sub#0"


def entry(n: int) -> QueueEntry:
    return QueueEntry(SHARD, f"sk{n:04d}", f"job_{n}", "", "", 1e12, "tok")


class Store:
    """``head`` of an in-memory shard; ``gate`` (when set) holds reads until it opens."""

    def __init__(self, n: int) -> None:
        self.entries = [entry(i) for i in range(n)]
        self.reads = 0
        self.gate: threading.Event | None = None
        self.read_started = threading.Event()

    def head(self, shard: str, limit: int, after_sk: str | None = None) -> list[QueueEntry]:
        self.reads += 1
        snapshot = list(self.entries[:limit])
        self.read_started.set()
        if self.gate is not None:
            assert self.gate.wait(10)
        return snapshot

    def __getattr__(self, name: str) -> Any:  # the rest of QueueStore is not used here
        raise AttributeError(name)


def take(heads: QueueHeads, want: int = 1) -> list[str]:
    return [e.job_id for e in heads.take([SHARD], lambda e: True, want)]


def test_empty_cache_reads_then_serves_from_the_read_ahead() -> None:
    store = Store(10)
    with ThreadPoolExecutor(4) as pool:
        heads = QueueHeads(store, pool, ttl_s=60, depth=100)  # type: ignore[arg-type]
        assert take(heads, 2) == ["job_0", "job_1"]
        assert take(heads, 2) == ["job_2", "job_3"]
        assert store.reads == 1  # one read, then the cache
        store.entries.append(entry(99))
        assert take(heads, 10) == [f"job_{i}" for i in range(4, 10)]
        assert take(heads) == ["job_99"]  # drained: the next lease reads again and sees it
        assert store.reads == 2


def test_stale_cache_is_refreshed_in_the_background_without_blocking_a_lease() -> None:
    store = Store(10)
    with ThreadPoolExecutor(4) as pool:
        clock = FakeClock()
        heads = QueueHeads(store, pool, ttl_s=0.05, depth=100, monotonic=clock)  # type: ignore[arg-type]
        assert take(heads) == ["job_0"]
        clock.advance(0.1)  # stale now
        store.gate, store.read_started = threading.Event(), threading.Event()
        t = time.monotonic()
        assert take(heads) == ["job_1"]  # served from the stale cache at once
        assert time.monotonic() - t < 1
        assert store.read_started.wait(5)  # ... while a background read is in flight
        assert take(heads) == ["job_2"]  # taken during the read
        store.gate.set()
        deadline = time.monotonic() + 5
        while heads._heads[SHARD].refreshing and time.monotonic() < deadline:
            time.sleep(0.01)
        # The read began before job_1 and job_2 were claimed, so it still lists them:
        # they must not come back.
        assert take(heads, 3) == ["job_3", "job_4", "job_5"]


def test_ttl_grows_with_slow_reads() -> None:
    store = Store(5)
    with ThreadPoolExecutor(2) as pool:
        heads = QueueHeads(store, pool, ttl_s=0.01, depth=100)  # type: ignore[arg-type]
        store.gate = threading.Event()
        threading.Timer(0.3, store.gate.set).start()
        assert take(heads) == ["job_0"]  # a 0.3 s read
        assert heads._ttl() >= 1.0  # 4x the last read
        reads = store.reads
        assert take(heads) == ["job_1"]
        assert store.reads == reads  # not stale yet: no new read


def test_a_requeued_entry_is_served_again() -> None:
    store = Store(1)
    with ThreadPoolExecutor(2) as pool:
        heads = QueueHeads(store, pool, ttl_s=60, depth=100)  # type: ignore[arg-type]
        assert take(heads) == ["job_0"]
        store.entries = [QueueEntry(SHARD, "sk0000", "job_0", "", "", 1e12, "new-token")]
        assert take(heads) == ["job_0"]  # same sort key, new token: a new queue entry
