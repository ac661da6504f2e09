"""A clock for tests of services that take ``now`` (``control_plane.clock.now`` by default):
it stands still until the test moves it, so "the lease has run out" needs no sleep."""

from __future__ import annotations

import time


class FakeClock:
    """Seconds since the epoch, starting at the real time and moved only by :meth:`advance`."""

    def __init__(self, start: float | None = None) -> None:
        self.t = time.time() if start is None else start

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds
