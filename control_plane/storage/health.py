"""Health checks that answer within a deadline even when the store does not.

A ping of a stalled store would hang for as long as the store does (each try up to the
read timeout). :func:`bounded_checks` runs every ping on a small pool of its own and waits at
most ``timeout_s`` for it: past that the check fails at once with ``Unavailable`` ("no
answer within …"), so ``/v1/health`` and ``/v2/health/ready`` report ``degraded`` within the
timeout, and a load balancer takes the replica out. A ping still running is waited on again
by the next check instead of starting another (a stalled store never piles up threads), and
the first ping that answers again makes the check healthy: recovery needs no restart.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout

from control_plane.errors import Unavailable

Check = Callable[[], None]


class BoundedCheck:
    """``fn`` (a storage ping) that raises ``Unavailable`` when it takes over ``timeout_s``."""

    def __init__(self, name: str, fn: Check, timeout_s: float, pool: ThreadPoolExecutor) -> None:
        self.name = name
        self._fn = fn
        self._timeout_s = timeout_s
        self._pool = pool
        self._lock = threading.Lock()
        self._running: Future[None] | None = None

    def __call__(self) -> None:
        with self._lock:
            fut = self._running
            if fut is None or fut.done():
                fut = self._running = self._pool.submit(self._fn)
        try:
            fut.result(timeout=self._timeout_s)
        except FutureTimeout:
            raise Unavailable(
                f"{self.name}: the store gave no answer within {self._timeout_s:g} s"
            ) from None


def bounded_checks(checks: dict[str, Check], timeout_s: float) -> dict[str, Check]:
    """Each check of ``checks`` bounded by ``timeout_s`` (see the module docstring)."""
    pool = ThreadPoolExecutor(max_workers=max(1, len(checks)), thread_name_prefix="health")
    return {name: BoundedCheck(name, fn, timeout_s, pool) for name, fn in checks.items()}
