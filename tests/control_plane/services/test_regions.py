"""Region policies, the lease eligibility filter, the latency table, request defaults,
per-region scale-up in placement and region-aware dispatch (control_plane/services/regions.py,
placement.py, dispatch.py). Pure functions and in-memory channels: no store, no sockets."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any

import pytest
from gpufleet.wire import JobRequest

from control_plane.errors import InvalidRequest
from control_plane.services.dispatch import Channel, Dispatcher, Placement
from control_plane.services.placement import (
    DeploymentInput,
    GpuInput,
    Policy,
    QueueSnapshot,
    RunnerInput,
    decide,
)
from control_plane.services.regions import (
    RegionDefaults,
    RegionPolicy,
    RegionService,
    estimated_rtt_ms,
    region_eligible,
    spill_rank,
    static_region_fits,
)
from control_plane.storage.protocols_auth import RunnerRecord

LIVE = ("eu-west-1", "eu-central-1", "us-east-1")


def rtt(a: str, b: str) -> float:
    est = estimated_rtt_ms(a, b)
    assert est is not None
    return est


# --------------------------------------------------------------------------- policy


@pytest.mark.parametrize(
    "policy",
    [
        RegionPolicy(),
        RegionPolicy("eu-west-1", ("eu-west-1",), 0.0),
        RegionPolicy("eu-west-1", (), 30.0),
        RegionPolicy("eu-west-1", ("eu-west-1", "eu-central-1"), 2.5),
        RegionPolicy(None, ("eu-west-1", "eu-central-1"), 30.0),
    ],
)
def test_policy_round_trips_through_the_queue_entry_string(policy: RegionPolicy) -> None:
    assert RegionPolicy.decode(policy.encode()) == policy


def test_a_plain_region_string_is_pinned_as_older_releases_meant_it() -> None:
    assert RegionPolicy.decode("eu") == RegionPolicy("eu", ("eu",), 0.0)
    assert RegionPolicy.decode("") == RegionPolicy()
    # a job stored before regions_allowed existed: its region was a hard filter
    assert RegionPolicy.of_job("eu", {"inputs": []}, 30.0) == RegionPolicy("eu", ("eu",), 0.0)
    new = {"placement": {"regions_allowed": [], "spill_after_s": None}}
    assert RegionPolicy.of_job("eu", new, 30.0) == RegionPolicy("eu", (), 30.0)


def test_static_latency_ranks_frankfurt_before_virginia_from_ireland() -> None:
    assert rtt("eu-west-1", "eu-central-1") < rtt("eu-west-1", "us-east-1")
    assert rtt("eu-west-1", "eu-west-1") < rtt("eu-west-1", "eu-central-1")
    assert estimated_rtt_ms("eu-west-1", "mars-1") is None
    # roughly what clouds publish (Ireland-Frankfurt ~25 ms, Ireland-Virginia ~70 ms)
    assert 10 < rtt("eu-west-1", "eu-central-1") < 40
    assert 60 < rtt("eu-west-1", "us-east-1") < 110


def test_spill_ladder_nearest_first_one_delay_apart() -> None:
    policy = RegionPolicy("eu-west-2", (), 10.0)  # London, where no runner is live
    assert spill_rank(policy, "eu-west-1", LIVE, rtt) == 1  # Dublin
    assert spill_rank(policy, "eu-central-1", LIVE, rtt) == 2  # Frankfurt
    assert spill_rank(policy, "us-east-1", LIVE, rtt) == 3
    for region, rank in (("eu-west-1", 1), ("eu-central-1", 2), ("us-east-1", 3)):
        assert not region_eligible(policy, region, rank * 10.0 - 0.01, LIVE, rtt)
        assert region_eligible(policy, region, rank * 10.0, LIVE, rtt)
    assert region_eligible(policy, "eu-west-2", 0.0, LIVE, rtt)


def test_never_outside_regions_allowed_however_long_it_waits() -> None:
    policy = RegionPolicy("eu-west-1", ("eu-west-1", "eu-central-1"), 1.0)
    assert region_eligible(policy, "eu-west-1", 0.0, LIVE, rtt)
    assert not region_eligible(policy, "eu-central-1", 0.5, LIVE, rtt)
    assert region_eligible(policy, "eu-central-1", 1.0, LIVE, rtt)
    assert not region_eligible(policy, "us-east-1", 1e9, LIVE, rtt)
    assert not region_eligible(policy, None, 1e9, LIVE, rtt)
    pinned = RegionPolicy("us-east-1", ("us-east-1",), 0.0).encode()
    assert not static_region_fits(pinned, "eu-west-1", 1e9)
    assert static_region_fits(pinned, "us-east-1", 0.0)
    anywhere_in_eu = RegionPolicy(None, ("eu-west-1", "eu-central-1"), 0.0).encode()
    assert static_region_fits(anywhere_in_eu, "eu-central-1", 0.0)
    assert not static_region_fits(anywhere_in_eu, "us-east-1", 1e9)


# --------------------------------------------------------------------------- the service


def runner_rec(rid: str, region: str, last: float | None = 1000.0) -> RunnerRecord:
    return RunnerRecord(rid, rid, region, {}, "s", 0.0, last_heartbeat_at=last)


def service(**kw: Any) -> RegionService:
    default = [
        runner_rec("a", "eu-west-1"),
        runner_rec("b", "eu-central-1"),
        runner_rec("c", "us-east-1"),
    ]
    records = kw.pop("records", default)
    args: dict[str, Any] = {
        "default_spill_s": 30.0,
        "control_plane_region": "eu-west-1",
        "tenant_defaults": {},
        "list_runners": lambda: records,
        "offline_after_s": 30.0,
        "now": lambda: 1010.0,
    }
    args.update(kw)
    return RegionService(**args)


def job(**kw: Any) -> JobRequest:
    tensor = {"name": "INPUT0", "datatype": "FP32", "shape": [1], "data": [1.0]}
    return JobRequest(model="m", inputs=[tensor], **kw)  # type: ignore[list-item]


def test_tenant_defaults_and_limits_apply_and_errors_name_the_field() -> None:
    svc = service(
        tenant_defaults={
            "acme": RegionDefaults("eu-west-1", ("eu-west-1", "eu-central-1")),
            "free": RegionDefaults("us-east-1", ()),
        }
    )
    got = svc.resolve("acme", job())
    assert (got.region, got.regions_allowed) == ("eu-west-1", ["eu-west-1", "eu-central-1"])
    got = svc.resolve("acme", job(region="eu-central-1"))
    assert got.region == "eu-central-1"
    got = svc.resolve("acme", job(regions_allowed=["eu-central-1"]))
    # the tenant's default is outside the narrower limit the request set: no preference
    assert (got.region, got.regions_allowed) == (None, ["eu-central-1"])
    with pytest.raises(InvalidRequest) as err:
        svc.resolve("acme", job(regions_allowed=["us-east-1"]))
    assert err.value.field == "regions_allowed"
    with pytest.raises(InvalidRequest) as err:
        svc.resolve("acme", job(region="us-east-1"))
    assert err.value.field == "region"
    with pytest.raises(InvalidRequest) as err:  # the wire models refuse it first; still
        svc.defaults("other", "m", None, ["eu-west-1", "eu|west"])
    assert err.value.field == "regions_allowed[1]"
    assert svc.resolve("free", job()).region == "us-east-1"
    untouched = job(region="ap-south-1")
    assert svc.resolve("other", untouched) is untouched


def test_deployment_defaults_come_after_the_tenant_and_within_its_limit() -> None:
    deps = {"m": RegionDefaults("us-east-1", ("us-east-1", "eu-west-1"))}
    svc = service(
        deployment_defaults=deps.get,
        tenant_defaults={"eu": RegionDefaults(None, ("eu-west-1", "eu-central-1"))},
    )
    got = svc.resolve("anyone", job())
    assert (got.region, got.regions_allowed) == ("us-east-1", ["us-east-1", "eu-west-1"])
    got = svc.resolve("eu", job())  # the tenant's limit narrows the deployment's
    assert (got.region, got.regions_allowed) == (None, ["eu-west-1"])


def test_measured_rtt_replaces_the_static_estimate_for_pairs_with_the_control_plane() -> None:
    svc = service()
    static = svc.rtt_ms("eu-west-1", "us-east-1")
    assert svc.source("eu-west-1", "us-east-1") == "static"
    svc.observe_rtt("us-east-1", 200.0)
    svc.observe_rtt("us-east-1", 100.0)  # averaged (EWMA)
    assert svc.source("us-east-1", "eu-west-1") == "measured"
    assert svc.rtt_ms("eu-west-1", "us-east-1") == pytest.approx(180.0)
    assert svc.rtt_ms("eu-central-1", "us-east-1") != 180.0  # not a pair with the CP
    assert static != svc.rtt_ms("eu-west-1", "us-east-1")
    table = svc.table()
    assert [r["region"] for r in table["regions"]] == sorted(LIVE)
    pair = next(
        p
        for p in table["latency"]
        if {p["from_region"], p["to_region"]} == {"eu-west-1", "us-east-1"}
    )
    assert pair["source"] == "measured" and pair["measured_ms"] == pytest.approx(180.0)
    assert pair["static_ms"] == static


def test_measurements_reorder_the_spill_ladder() -> None:
    svc = service()
    policy = RegionPolicy("eu-west-1", (), 10.0)
    entry = policy.encode()
    assert svc.fits(entry, "eu-central-1", 10.0) and not svc.fits(entry, "us-east-1", 10.0)
    # measured: Frankfurt is slow today, Virginia fast; the ladder follows the measurements
    svc.observe_rtt("eu-central-1", 300.0)
    svc.observe_rtt("us-east-1", 5.0)
    assert svc.fits(entry, "us-east-1", 10.0) and not svc.fits(entry, "eu-central-1", 10.0)


def test_offline_runners_are_not_live_regions_and_reasons_name_the_spill() -> None:
    records = [runner_rec("a", "eu-west-1"), runner_rec("b", "eu-central-1", last=900.0)]
    svc = service(records=records)
    assert svc.live_regions() == {"eu-west-1": 1}
    policy = RegionPolicy("eu-west-2", (), 12.0)
    assert svc.waiting_reason(policy, 0.0) == (
        "waiting for a runner in eu-west-2; may spill to eu-west-1 in 12 s"
    )
    assert svc.waiting_reason(policy, 20.0) == (
        "waiting for a runner in eu-west-2; may spill to eu-west-1 now"
    )
    pinned = RegionPolicy("eu-west-2", ("eu-west-2",), 0.0)
    assert svc.waiting_reason(pinned, 0.0) == "waiting for a runner in eu-west-2 (pinned)"
    nowhere = RegionPolicy("eu-west-2", ("eu-west-2", "us-east-1"), 5.0)
    assert svc.waiting_reason(nowhere, 0.0) == (
        "waiting for a runner in eu-west-2; no other region within "
        "['eu-west-2', 'us-east-1'] has a live runner to spill to"
    )
    assert svc.waiting_reason(RegionPolicy(), 0.0) is None


# --------------------------------------------------------------------------- placement


def runner_in(rid: str, region: str) -> RunnerInput:
    return RunnerInput(rid, region, True, (GpuInput(0, "L4", 24000, 0),), {})


def test_a_busy_region_gets_its_own_replica() -> None:
    runners = [runner_in("r-eu", "eu-west-1"), runner_in("r-us", "us-east-1")]
    dep = DeploymentInput("m", 1, 3, ready_versions=("1",), gpu_memory_mb=8000)
    # a cooldown longer than the test: the global scale-up cannot add the replica
    policy = Policy(scale_up_wait_s=5.0, scale_down_idle_s=60.0, cooldown_s=1000.0)
    first = decide([dep], runners, {}, {}, {}, now=0.0, policy=policy)
    placed = {a.runner_id for a in first["m"].assignments}
    assert len(placed) == 1
    idle = "us-east-1" if placed == {"r-eu"} else "eu-west-1"
    # jobs preferring the region without a replica: waiting, but not long enough yet
    snap = QueueSnapshot(depth=4, oldest_at=97.0, oldest_by_region={idle: 97.0})
    same = decide([dep], runners, first, {"m": snap.stat(100.0)}, {}, now=100.0, policy=policy)
    assert {a.runner_id for a in same["m"].assignments} == placed
    # past scale_up_wait_s: a replica in that region, the existing one kept
    snap = replace(snap, oldest_at=90.0, oldest_by_region={idle: 90.0})
    grown = decide([dep], runners, first, {"m": snap.stat(100.0)}, {}, now=100.0, policy=policy)
    assert {a.runner_id for a in grown["m"].assignments} == {"r-eu", "r-us"}
    assert grown["m"].replicas == 2
    # at max_replicas: no region gets more
    capped = replace(dep, max_replicas=1)
    held = decide([capped], runners, first, {"m": snap.stat(100.0)}, {}, now=100.0, policy=policy)
    assert {a.runner_id for a in held["m"].assignments} == placed


# --------------------------------------------------------------------------- dispatch


class Endpoint:
    def __init__(self, d: Dispatcher, runner_id: str, region: str) -> None:
        self.d = d
        self.frames: list[dict[str, Any]] = []
        self.channel = Channel(runner_id=runner_id, send=self.send, region=region)
        d.attach(self.channel)
        d.update(self.channel, frozenset({("m", "1")}), 4)

    async def send(self, data: str | bytes) -> None:
        import json

        frame = json.loads(data)
        self.frames.append(frame)
        self.d.resolve(self.channel, {"id": frame["id"], "type": "result", "outputs": []})


def test_dispatch_keeps_to_allowed_regions_and_prefers_the_preferred_one() -> None:
    async def scenario() -> None:
        d = Dispatcher(queue_wait_s=0.5)
        eu = Endpoint(d, "r-eu", "eu-west-1")
        us = Endpoint(d, "r-us", "us-east-1")
        body: dict[str, Any] = {"inputs": []}
        for _ in range(6):
            await d.infer("m", "1", body, 2.0, Placement("us-east-1", frozenset()))
        assert (len(us.frames), len(eu.frames)) == (6, 0)
        for _ in range(6):
            await d.infer("m", "1", body, 2.0, Placement(None, frozenset({"eu-west-1"})))
        assert len(eu.frames) == 6
        # preferred region without a runner: any allowed one
        await d.infer("m", "1", body, 2.0, Placement("ap-south-1", frozenset()))
        assert len(eu.frames) + len(us.frames) == 13
        nowhere = Placement(None, frozenset({"ap-south-1"}))
        assert not d.routable("m", "1", where=nowhere)
        assert d.routable("m", "1", where=Placement(None, frozenset({"us-east-1"})))

    asyncio.run(asyncio.wait_for(scenario(), 10))
