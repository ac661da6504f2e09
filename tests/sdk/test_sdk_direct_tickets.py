"""The SDK's direct-mode ticket cache (unit): renewal before expiry, dropping a refused
ticket (only that one), the short memory of "no direct runner"."""

from __future__ import annotations

import pytest
from gpufleet import direct
from gpufleet.direct import DirectTickets
from gpufleet.wire import DirectTicket


class Clock:
    t = 1000.0

    def __call__(self) -> float:
        return self.t


def ticket(value: str, expires_in: int) -> DirectTicket:
    return DirectTicket(
        url="http://r:8010",
        ticket=value,
        expires_at="2030-01-01T00:00:00.000Z",
        expires_in=expires_in,
        runner_id="run_1",
        model="m",
        version="1",
    )


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    c = Clock()
    monkeypatch.setattr(direct.time, "monotonic", c)
    return c


def test_renewed_before_expiry(clock: Clock) -> None:
    tickets = DirectTickets()
    key = ("m", None, None)
    tickets.put(key, ticket("a", 300))
    clock.t += 269
    assert tickets.get(key) is not None and tickets.get(key).ticket == "a"  # type: ignore[union-attr]
    clock.t += 1  # 30 s before expiry: ask for a new one
    assert tickets.get(key) is None
    tickets.put(key, ticket("short", 30))  # short tickets: at two thirds of their life
    clock.t += 19
    assert tickets.get(key) is not None
    clock.t += 1
    assert tickets.get(key) is None


def test_drop_only_the_refused_ticket(clock: Clock) -> None:
    tickets = DirectTickets()
    key = ("m", "1", "eu")
    tickets.put(key, ticket("old", 300))
    tickets.put(key, ticket("new", 300))  # another call renewed meanwhile
    tickets.drop(key, ticket("old", 300))
    assert tickets.get(key) is not None and tickets.get(key).ticket == "new"  # type: ignore[union-attr]
    tickets.drop(key, ticket("new", 300))
    assert tickets.get(key) is None
    assert tickets.get(("m", "1", "us")) is None  # keys are per region


def test_no_direct_runner_is_remembered_briefly(clock: Clock) -> None:
    tickets = DirectTickets()
    key = ("m", None, None)
    tickets.mark_none(key)
    assert tickets.none_now(key)
    clock.t += direct.NO_DIRECT_S
    assert not tickets.none_now(key)
    tickets.mark_none(key)
    tickets.put(key, ticket("a", 300))  # a ticket after all: forget the "none"
    assert not tickets.none_now(key)
