"""RollupService on the embedded store with a clock the test moves: job counts are kept in
memory until a flush, queue and GPU readings are sampled, charts come out as full windows,
and tenants see only their own jobs."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import pytest
from gpufleet.wire import JobView

from control_plane.errors import Forbidden, InvalidRequest
from control_plane.services.principal import ROLE_SCOPES, Principal
from control_plane.services.rollups import RollupService
from control_plane.storage.protocols import JobRecord
from control_plane.storage.protocols_auth import RunnerRecord
from control_plane.storage.stores import Stores

T0 = 1_800_000_000.0  # a minute boundary
USER = Principal("k1", "acme", "user", ROLE_SCOPES["user"])
OTHER = Principal("k2", "globex", "user", ROLE_SCOPES["user"])
ADMIN = Principal("k0", "default", "admin", ROLE_SCOPES["admin"])
JOB = JobRecord(
    id="job_1",
    tenant="acme",
    model="add_sub",
    model_version="1",
    pinned=False,
    status="QUEUED",
    priority=0,
    created_at=T0,
    timeout_s=60,
    ttl_s=60,
    max_attempts=3,
    region=None,
    request={},
)


def _view(job: JobRecord) -> Callable[[], JobView]:
    """The hook's view getter: it must not be needed (the hook counts from the record)."""

    def build() -> JobView:
        raise AssertionError("the rollup hook built the job's view")

    return build


@pytest.fixture
def clock() -> list[float]:
    return [T0 + 5]


@pytest.fixture
def svc(stores: Stores, clock: list[float]) -> RollupService:
    assert stores.rollups is not None
    return RollupService(stores.rollups, now=lambda: clock[0])


def test_job_counts_are_flushed_and_charted_per_tenant(
    svc: RollupService, clock: list[float]
) -> None:
    svc.job_transition(JOB, _view(JOB), None)
    running = replace(JOB, status="RUNNING", started_at=T0 + 0.25)  # queued 250 ms
    svc.job_transition(running, _view(running), "QUEUED")
    done = replace(JOB, status="SUCCEEDED")
    svc.job_transition(done, _view(done), "RUNNING")
    clock[0] += 60
    failed = replace(JOB, id="job_2", status="FAILED")
    svc.job_transition(failed, _view(failed), "RUNNING")
    assert svc.chart(USER, "jobs", "hour")["series"] == []  # nothing flushed yet
    assert svc.flush() == 5  # jobs#acme and jobs#* for two minutes, queue for one
    assert svc.flush() == 0

    chart = svc.chart(USER, "jobs", "hour")
    assert len(chart["x"]) == 60 and chart["x"][-1] == (T0 + 60) // 60 * 60
    got = {s["label"]: s["values"][-2:] for s in chart["series"]}
    assert got == {"SUBMITTED": [1, 0], "SUCCEEDED": [1, 0], "FAILED": [0, 1]}
    assert svc.chart(OTHER, "jobs", "hour")["series"] == []
    assert {s["label"] for s in svc.chart(ADMIN, "jobs", "day")["series"]} == set(got)
    assert len(svc.chart(ADMIN, "jobs", "day")["x"]) == 1440

    queue = svc.chart(ADMIN, "queue", "hour")
    wait = next(s for s in queue["series"] if s["label"] == "add_sub wait ms")
    assert wait["values"][-2:] == [250.0, None]


def test_queue_depth_and_gpus_are_sampled(svc: RollupService, clock: list[float]) -> None:
    gpus = [{"index": 0, "utilization_pct": 55.0, "memory_used_mb": 2048}]
    live = RunnerRecord("r1", "host-a", "eu", {}, "s", T0, last_heartbeat_at=T0, gpus=gpus)
    gone = replace(live, id="r2", name="host-b", last_heartbeat_at=T0 - 3600)
    svc.sample([live, gone], {"add_sub": 12})
    gpu = {s["label"]: s["values"][-1] for s in svc.chart(ADMIN, "gpu", "hour")["series"]}
    assert gpu == {"host-a/0 util %": 55.0, "host-a/0 MB used": 2048.0}
    queue = {s["label"]: s["values"][-1] for s in svc.chart(ADMIN, "queue", "hour")["series"]}
    assert queue["add_sub queued"] == 12


def test_charts_check_kind_window_and_role(svc: RollupService) -> None:
    with pytest.raises(InvalidRequest) as exc:
        svc.chart(ADMIN, "nope", "hour")
    assert exc.value.field == "kind"
    with pytest.raises(InvalidRequest) as exc:
        svc.chart(ADMIN, "jobs", "week")
    assert exc.value.field == "window"
    for kind in ("queue", "gpu"):
        with pytest.raises(Forbidden):
            svc.chart(USER, kind, "hour")
