"""The runner's retry delay: doubles per failure up to the cap, jittered, reset by a success."""

from __future__ import annotations

from runner.backoff import Backoff


def test_doubles_to_the_cap_and_resets() -> None:
    b = Backoff(0.5, 5.0, rng=lambda: 0.5)  # no jitter: factor 1.0
    assert [b.next_wait() for _ in range(6)] == [0.5, 1.0, 2.0, 4.0, 5.0, 5.0]
    b.reset()
    assert b.delay_s == 0.5 and b.next_wait() == 0.5


def test_jitter_spans_half_to_one_and_a_half() -> None:
    assert Backoff(2.0, rng=lambda: 0.0).next_wait() == 1.0
    assert Backoff(2.0, rng=lambda: 0.999).next_wait() == 2.0 * 1.499
