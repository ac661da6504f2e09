"""Throttling of failed authentication (brute force of API keys, refresh and join tokens).

``FailureThrottle`` counts failures per key (``key:<key id>`` and ``addr:<client address>``)
in a sliding window. Once a key has ``limit`` failures inside ``window_s``, every attempt
under it, right or wrong, is refused with ``RateLimited`` (429 + ``Retry-After``: the seconds
until the oldest counted failure leaves the window). Successes do not clear the count: a
guesser who also holds one valid key cannot reset the address's budget with it.

The counts live in this replica's memory (a restart forgets them; N replicas behind a load
balancer allow up to N x the limit); a per-address limit of the edge proxy or WAF adds a
fleet-wide bound (docs/security.md).
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable

from control_plane.errors import RateLimited

MAX_TRACKED = 100_000  # keys tracked at once; past it the oldest-touched half is dropped


class FailureThrottle:
    """Sliding-window failure counts per key; thread-safe (services run in a thread pool)."""

    def __init__(
        self, limit: int, window_s: float, now: Callable[[], float] = time.monotonic
    ) -> None:
        self._limit = limit
        self._window_s = window_s
        self._now = now
        self._failures: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self._limit > 0

    def check(self, keys: Iterable[str], what: str) -> None:
        """``RateLimited`` when any of ``keys`` has used up its failures in the window."""
        if not self.enabled:
            return
        t = self._now()
        with self._lock:
            for key in keys:
                times = self._recent(key, t)
                if times is not None and len(times) >= self._limit:
                    retry = max(1, math.ceil(times[0] + self._window_s - t))
                    raise RateLimited(
                        f"too many failed {what} attempts from this "
                        f"{'key' if key.startswith('key:') else 'address'}; retry in {retry} s",
                        retry_after=retry,
                    )

    def fail(self, keys: Iterable[str]) -> None:
        """Count one failure under each of ``keys``."""
        if not self.enabled:
            return
        t = self._now()
        with self._lock:
            if len(self._failures) >= MAX_TRACKED:
                self._drop_oldest()
            for key in keys:
                times = self._recent(key, t)
                if times is None:
                    times = self._failures[key] = deque()
                times.append(t)
                while len(times) > self._limit:
                    times.popleft()

    def _recent(self, key: str, t: float) -> deque[float] | None:
        times = self._failures.get(key)
        if times is None:
            return None
        while times and times[0] <= t - self._window_s:
            times.popleft()
        if not times:
            del self._failures[key]
            return None
        return times

    def _drop_oldest(self) -> None:
        by_last = sorted(self._failures.items(), key=lambda kv: kv[1][-1] if kv[1] else 0.0)
        for key, _ in by_last[: len(by_last) // 2]:
            del self._failures[key]
