"""Submit trusts a replica's recent reads of the model and the queue depth (fewer storage
calls on the hot path), yet a delete on the same replica and a full queue are exact."""

from __future__ import annotations

import collections
from typing import Any

import pytest

from control_plane.errors import ModelNotFound, RateLimited
from tests.contract.fleet import job, principal, push_model, services

USER = principal("acme")


def counting(stores: Any) -> collections.Counter[str]:
    """DynamoDB calls by operation name, from now on."""
    calls: collections.Counter[str] = collections.Counter()
    dynamodb = stores.extra["dynamodb"]

    def hook(model: Any, **kw: Any) -> None:
        calls[model.name] += 1

    dynamodb.meta.events.register("before-call.dynamodb.*", hook)
    return calls


@pytest.mark.parametrize("store_kind", ["dynamodb"])  # counts DynamoDB calls
def test_repeated_submits_read_the_model_and_depth_once(
    settings: Any, stores: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Cache windows longer than six submits can take on a loaded machine (moto over HTTP):
    # what is checked is that reads inside the window are not repeated, not the window.
    monkeypatch.setattr("control_plane.services.jobs_submit.MODEL_CACHE_S", 60.0)
    monkeypatch.setattr("control_plane.services.jobs_submit.DEPTH_CACHE_S", 60.0)
    jobs, models = services(settings, stores)
    push_model(models, USER)
    calls = counting(stores)
    jobs.submit(USER, job())
    first = dict(calls)
    calls.clear()
    for _ in range(5):
        jobs.submit(USER, job())
    assert first.get("Query", 0) >= 2  # the model's versions and the depth counters
    assert calls.get("Query", 0) == 0 and calls.get("GetItem", 0) == 0, dict(calls)
    assert jobs.queue_depths() == {"add_sub": 6}


def test_a_delete_on_this_replica_is_seen_at_once(settings: Any, stores: Any) -> None:
    jobs, models = services(settings, stores)
    push_model(models, USER)
    jobs.submit(USER, job())  # caches the READY version
    models.delete_version(USER, "add_sub", "1")
    with pytest.raises(ModelNotFound):
        jobs.submit(USER, job())


def test_the_limit_is_checked_against_storage_near_full(settings: Any, stores: Any) -> None:
    jobs, models = services(settings.model_copy(update={"max_queue_depth": 4}), stores)
    push_model(models, USER)
    for _ in range(4):
        jobs.submit(USER, job())
    with pytest.raises(RateLimited):
        jobs.submit(USER, job())
    assert jobs.queue_depths() == {"add_sub": 4}
