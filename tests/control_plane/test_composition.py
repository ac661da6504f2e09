"""The composition root builds every service once and wires them through constructors and
the transition bus: the jobs service publishes to the bus the root subscribed, in order."""

from __future__ import annotations

from typing import Any

from control_plane.app import create_app
from control_plane.composition import build_services
from control_plane.storage.stores import Stores
from tests.contract.fleet import job, principal, push_model

USER = principal("acme")


def test_one_bus_subscribed_in_order_and_reached_by_a_submit(settings: Any, stores: Stores) -> None:
    svc = build_services(settings, stores)
    bus = svc.transitions
    assert bus is not None and svc.jobs.transitions is bus  # type: ignore[attr-defined]
    assert svc.quotas is svc.jobs.quotas  # type: ignore[attr-defined]
    # quota counters, webhooks, deployments' job_queued (rollups only with a rollup store)
    assert len(bus.records) == 3 + (svc.rollups is not None)
    app = create_app(settings, svc)
    assert len(bus.records) == 4 + (svc.rollups is not None)  # + the metrics' counter
    assert app.state.count_completions is False

    heard: list[tuple[str, str | None]] = []
    bus.on_record(lambda rec, _view, previous: heard.append((rec.status, previous)))
    push_model(svc.models, USER)
    svc.jobs.submit(USER, job())
    assert heard == [("QUEUED", None)]
    assert svc.quotas is not None and svc.quotas.loads()["acme"].queued == 1


def test_services_built_by_hand_count_completions_in_the_routes(
    settings: Any, stores: Stores
) -> None:
    svc = build_services(settings, stores)
    svc.transitions = None  # a Services made without a bus (tests' stand-ins)
    assert create_app(settings, svc).state.count_completions is True
