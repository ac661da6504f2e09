"""The retry delay of the runner's daemon loops (heartbeat, lease): exponential with jitter.

Each failure waits ``next_wait()`` (the current delay times a factor in [0.5, 1.5)), then
doubles the delay up to ``max_s``; a success ``reset()``s it. ``max_s`` is small on purpose:
the runner is back within seconds of a control-plane outage.
"""

from __future__ import annotations

import random
from collections.abc import Callable


class Backoff:
    """One loop's retry delay (see the module docstring)."""

    def __init__(
        self, initial_s: float, max_s: float = 5.0, rng: Callable[[], float] = random.random
    ) -> None:
        self._initial_s = initial_s
        self._max_s = max_s
        self._rng = rng
        self.delay_s = initial_s  # the delay the next failure waits about (before jitter)

    def next_wait(self) -> float:
        """How long this failure waits; the next one waits about twice as long."""
        wait = self.delay_s * (0.5 + self._rng())
        self.delay_s = min(self.delay_s * 2, self._max_s)
        return wait

    def reset(self) -> None:
        """After a success: the next failure waits about ``initial_s`` again."""
        self.delay_s = self._initial_s
