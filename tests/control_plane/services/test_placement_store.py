"""The stored placement: revision-fenced writes in the deployment store (on both stores),
replicas converge."""

from __future__ import annotations

from typing import Any

import pytest

from control_plane.services import placement as pl
from control_plane.services.deployments import DeploymentService
from control_plane.services.models import ModelService
from control_plane.storage.protocols import ModelVersionRecord, PlanRecord
from control_plane.storage.protocols_auth import RunnerRecord
from control_plane.storage.stores import Stores
from tests.conftest import STORE_KINDS

pytestmark = pytest.mark.parametrize("store_kind", STORE_KINDS)

GPU = {"index": 0, "uuid": "G", "name": "L4", "memory_total_mb": 24000, "memory_used_mb": 0}


class StaleFirstRead:
    """A store whose first ``get_plan`` answers what it held before (a slow replica)."""

    def __init__(self, inner: Any, stale: PlanRecord | None) -> None:
        self._inner, self._stale, self._used = inner, stale, False

    def get_plan(self) -> PlanRecord | None:
        if not self._used:
            self._used = True
            return self._stale
        return self._inner.get_plan()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def _runner(rid: str, at: float) -> RunnerRecord:
    return RunnerRecord(rid, rid, "eu", {}, "s", 0.0, last_heartbeat_at=at, gpus=[GPU])


def _service(
    settings: Any, stores: Stores, store: Any, runners: list[RunnerRecord], t: float
) -> DeploymentService:
    blobs = stores.blobs  # presigning is not used here
    return DeploymentService(
        store,
        store,
        ModelService(settings, store, blobs),
        blobs,
        lambda: runners,
        lambda rid: next((r for r in runners if r.id == rid), None),
        lambda names: {n: pl.QueueSnapshot() for n in names},
        presign_ttl_s=60,
        offline_after_s=30.0,
        interval_s=5.0,
        now=lambda: t,
    )


def test_plan_writes_are_fenced_by_revision(stores: Stores) -> None:
    store = stores.deployments
    assert store.get_plan() is None
    assert store.save_plan({"plans": {}}, 1.0, 0)
    assert not store.save_plan({"plans": {"x": 1}}, 1.0, 0)  # someone wrote revision 1
    assert store.save_plan({"plans": {"y": 2}}, 2.0, 1)
    assert not store.save_plan({"plans": {}}, 3.0, 1)
    rec = store.get_plan()
    assert rec == PlanRecord(revision=2, planned_at=2.0, doc={"plans": {"y": 2}})


def test_replicas_reach_the_same_stored_answer(settings: Any, stores: Stores) -> None:
    store: Any = stores.deployments
    store.claim_name("m", "acme", 0.0)
    rec = ModelVersionRecord("m", "1", "acme", "UPLOADING", 0.0, files=[])
    assert store.put_version(rec)
    assert store.mark_ready(rec)
    store.put_deployment("m", {"min_replicas": 1, "max_replicas": 1, "regions": []}, 0.0)
    t = 100.0
    # replica A sees runners a and b; replica B, a moment later, only b
    a = _service(settings, stores, store, [_runner("run_a", t), _runner("run_b", t)], t)
    plans_a = a.reconcile()
    assert [x.runner_id for x in plans_a["m"].assignments] == ["run_a"]
    # B read the table before A wrote: its own write loses and it answers A's decision
    slow = StaleFirstRead(store, None)
    b = _service(settings, stores, slow, [_runner("run_b", t + 1)], t + 1)
    assert b.reconcile() == plans_a
    # within the interval nobody decides again: the stored answer is served
    c = _service(settings, stores, store, [_runner("run_b", t)], t + 2)
    assert c.reconcile() == plans_a
    assert store.get_plan() is not None and store.get_plan().revision == 1
    # after it, a replica decides again (run_a went away) and bumps the revision
    d = _service(settings, stores, store, [_runner("run_b", t + 10)], t + 10)
    assert [x.runner_id for x in d.reconcile()["m"].assignments] == ["run_b"]
    assert store.get_plan().revision == 2
