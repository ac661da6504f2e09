"""The webhook hook gets the job's record as the commit wrote it: completing a job reads the
job once (the lease check), and a job with a webhook still gets its event enqueued."""

from __future__ import annotations

import collections
from typing import Any

import pytest

from control_plane.composition import build_services
from tests.contract.fleet import job, lease, principal, push_model, succeed

USER = principal("acme")


@pytest.mark.parametrize("store_kind", ["dynamodb"])  # counts DynamoDB calls
def test_complete_reads_no_job_and_enqueues_the_webhook(settings: Any, stores: Any) -> None:
    svc = build_services(settings, stores)
    assert svc.webhooks is not None
    push_model(svc.models, USER)
    view, _ = svc.jobs.submit(
        USER, job(webhook={"url": "http://127.0.0.1:9/hook", "events": ["completed"]})
    )
    [leased] = lease(svc.jobs)
    calls: collections.Counter[str] = collections.Counter()
    dynamodb = stores.extra["dynamodb"]

    def hook(model: Any, **kw: Any) -> None:
        calls[model.name] += 1

    dynamodb.meta.events.register("before-call.dynamodb.*", hook)
    succeed(svc.jobs, leased)
    # the record leased on this replica is kept: the commit reads nothing before its write
    assert calls["GetItem"] == 0, dict(calls)
    deliveries = svc.webhooks.delivery_log(USER, view.id).deliveries
    assert [d.type for d in deliveries] == ["job.completed"]
