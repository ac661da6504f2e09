"""The ``aws-asg`` provider against moto's EC2 + Auto Scaling over HTTP, driven by the
capacity service on the embedded store: the group's desired capacity follows the decisions,
busy instances are protected from scale-in, a drained idle instance is terminated with the
desired capacity decremented and its termination lifecycle action completed.

The service's clock is a test clock; runner records and heartbeats are written to the real
runner store with the same clock (a runner per instance, labelled as the launch template's
boot script labels it). moto has no ``CompleteLifecycleAction``: the call is observed on the
client (botocore's event hook) as it goes out over HTTP.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from gpufleet.wire import PoolSpec

from control_plane.errors import Conflict, InvalidRequest
from control_plane.services.capacity.providers.aws_asg import AsgProvider
from control_plane.services.capacity.providers.base import HOST_LABEL, POOL_LABEL
from control_plane.services.capacity.service import CapacityService
from control_plane.services.placement import QueueSnapshot
from control_plane.services.principal import ROLE_SCOPES, Principal
from control_plane.storage.protocols_auth import RunnerRecord
from control_plane.storage.stores import Stores

REGION = "us-east-1"
ADMIN = Principal(sub="admin", tenant="t", role="admin", scopes=ROLE_SCOPES["admin"])


class Clock:
    def __init__(self) -> None:
        self.t = 1_800_000_000.0

    def __call__(self) -> float:
        return self.t


class Queue:
    """What the queue holds (the test sets it); the service reads it like JobService's."""

    def __init__(self) -> None:
        self.depth = 0
        self.oldest_at: float | None = None

    def depths(self) -> dict[str, int]:
        return {"llm": self.depth}

    def snapshot(self, models: list[str]) -> dict[str, QueueSnapshot]:
        return {m: QueueSnapshot(self.depth, self.oldest_at) for m in models if m == "llm"}


@pytest.fixture
def group(moto_endpoint: str) -> tuple[str, Any]:
    """A fresh Auto Scaling group (min 0, max 4, desired 0) with a termination hook."""
    kw = {"region_name": REGION, "endpoint_url": moto_endpoint}
    ec2 = boto3.client("ec2", **kw)
    asg = boto3.client("autoscaling", **kw)
    name = f"gpu-{uuid.uuid4().hex[:8]}"
    ami = ec2.describe_images()["Images"][0]["ImageId"]
    ec2.create_launch_template(
        LaunchTemplateName=f"lt-{name}",
        LaunchTemplateData={"ImageId": ami, "InstanceType": "g5.xlarge"},
    )
    asg.create_auto_scaling_group(
        AutoScalingGroupName=name,
        LaunchTemplate={"LaunchTemplateName": f"lt-{name}"},
        MinSize=0,
        MaxSize=4,
        DesiredCapacity=0,
        AvailabilityZones=[f"{REGION}a"],
    )
    asg.put_lifecycle_hook(
        LifecycleHookName="drain",
        AutoScalingGroupName=name,
        LifecycleTransition="autoscaling:EC2_INSTANCE_TERMINATING",
        HeartbeatTimeout=300,
        DefaultResult="CONTINUE",
    )
    return name, asg


@pytest.fixture
def rig(
    stores: Stores, moto_endpoint: str, group: tuple[str, Any]
) -> Iterator[tuple[CapacityService, Clock, Queue, AsgProvider, list[dict[str, Any]]]]:
    clock, queue = Clock(), Queue()
    provider = AsgProvider(REGION, moto_endpoint)
    completed: list[dict[str, Any]] = []
    runner_store = stores.runners
    assert stores.capacity is not None
    svc = CapacityService(
        stores.capacity,
        runner_store.list_runners,
        lambda rid, drain: runner_store.merge_config(rid, {"drain": drain}),
        queue.snapshot,
        queue.depths,
        {"aws-asg": provider},
        lambda region, labels, ttl: "gfj_unused",
        offline_after_s=120,
        interval_s=1,
        drain_settle_s=2,
        now=clock,
    )
    name, _ = group
    svc.put(
        ADMIN,
        "gpu-a10g",
        PoolSpec.model_validate(
            {
                "gpu_type": "A10G",
                "gpu_count": 1,
                "region": REGION,
                "models": ["llm"],
                "max_hosts": 3,
                "jobs_per_host": 1,
                "idle_timeout_s": 30,
                "join_timeout_s": 600,
                "provider": {
                    "kind": "aws-asg",
                    "settings": {"group": name, "lifecycle_hook": "drain"},
                },
            }
        ),
    )
    asg_client = provider._client(svc_pool_config(svc))[0]

    def record(params: dict[str, Any], **_: Any) -> None:
        completed.append(dict(params))

    asg_client.meta.events.register(
        "provide-client-params.autoscaling.CompleteLifecycleAction", record
    )
    yield svc, clock, queue, provider, completed


def svc_pool_config(svc: CapacityService) -> Any:
    from control_plane.services.capacity.service import _config

    rec = svc._store.get_pool("gpu-a10g")
    assert rec is not None
    return _config(rec.name, PoolSpec.model_validate(rec.spec))


def _group(asg: Any, name: str) -> dict[str, Any]:
    return dict(
        asg.describe_auto_scaling_groups(AutoScalingGroupNames=[name])["AutoScalingGroups"][0]
    )


def _join(stores: Stores, instance: str, t: float) -> str:
    rid = f"run_{instance}"
    stores.runners.create_runner(
        RunnerRecord(
            id=rid,
            name=instance,
            region=REGION,
            labels={POOL_LABEL: "gpu-a10g", HOST_LABEL: instance},
            secret="s" * 43,
            registered_at=t,
        )
    )
    return rid


def _beat(stores: Stores, rid: str, t: float, jobs: list[str]) -> None:
    stores.runners.record_heartbeat(rid, t, [], [], {}, jobs)


def test_desired_capacity_protection_and_lifecycle_follow_decisions(
    rig: Any, group: tuple[str, Any], stores: Stores
) -> None:
    svc, clock, queue, _, completed = rig
    name, asg = group
    svc.reconcile(force=True)
    assert _group(asg, name)["DesiredCapacity"] == 0  # nothing queued: nothing asked

    queue.depth, queue.oldest_at = 2, clock.t
    decided = svc.reconcile(force=True)
    assert decided is not None and decided["gpu-a10g"].launch == 2
    g = _group(asg, name)
    assert g["DesiredCapacity"] == 2
    busy, idle = sorted(i["InstanceId"] for i in g["Instances"])

    # both instances' runners join; one takes the jobs
    clock.t += 5
    rb, ri = _join(stores, busy, clock.t), _join(stores, idle, clock.t)
    queue.depth, queue.oldest_at = 0, None
    _beat(stores, rb, clock.t, ["job_1"])
    _beat(stores, ri, clock.t, [])
    svc.reconcile(force=True)
    protected = {i["InstanceId"]: i["ProtectedFromScaleIn"] for i in _group(asg, name)["Instances"]}
    assert protected == {busy: True, idle: False}
    view = svc.get(ADMIN, "gpu-a10g")
    assert {h.id: h.state for h in view.hosts} == {busy: "up", idle: "up"}

    # idle past the timeout: drained first (the busy one is not), then terminated
    clock.t += 31
    _beat(stores, rb, clock.t, ["job_1"])
    _beat(stores, ri, clock.t, [])
    d = svc.reconcile(force=True)
    assert d is not None and d["gpu-a10g"].drain == (idle,)
    assert stores.runners.find_runner(ri).config.get("drain") is True  # type: ignore[union-attr]
    assert not stores.runners.find_runner(rb).config.get("drain")  # type: ignore[union-attr]
    assert _group(asg, name)["DesiredCapacity"] == 2

    clock.t += 3
    _beat(stores, rb, clock.t, ["job_1"])
    _beat(stores, ri, clock.t, [])
    d = svc.reconcile(force=True)
    assert d is not None and d["gpu-a10g"].terminate == (idle,)
    g = _group(asg, name)
    assert g["DesiredCapacity"] == 1  # decremented: the group does not replace it
    assert [i["InstanceId"] for i in g["Instances"]] == [busy]
    assert g["Instances"][0]["ProtectedFromScaleIn"] is True
    assert completed == [
        {
            "LifecycleHookName": "drain",
            "AutoScalingGroupName": name,
            "InstanceId": idle,
            "LifecycleActionResult": "CONTINUE",
        }
    ]

    # demand again: the group grows from where it is, never past max_hosts
    queue.depth, queue.oldest_at = 10, clock.t
    clock.t += 1
    _beat(stores, rb, clock.t, ["job_1"])
    d = svc.reconcile(force=True)
    assert d is not None and d["gpu-a10g"].launch == 2
    assert _group(asg, name)["DesiredCapacity"] == 3
    events = svc.get(ADMIN, "gpu-a10g").events
    assert [e.action for e in events][:1] == ["launch"]
    assert {"launch", "protect", "drain", "terminate"} <= {e.action for e in events}
    assert "error" not in {e.action for e in events}, [
        e.reason for e in events if e.action == "error"
    ]

    with pytest.raises(Conflict):  # hosts left: not deleted
        svc.delete(ADMIN, "gpu-a10g")


def test_settings_are_checked_naming_the_field(rig: Any) -> None:
    svc = rig[0]
    bad = {"provider": {"kind": "aws-asg", "settings": {"grop": "x"}}}
    with pytest.raises(InvalidRequest) as err:
        svc.put(ADMIN, "p", PoolSpec.model_validate(bad))
    assert err.value.field == "provider.settings.grop"
    with pytest.raises(InvalidRequest) as err:
        svc.put(ADMIN, "p", PoolSpec.model_validate({"provider": {"kind": "aws-asg"}}))
    assert err.value.field == "provider.settings.group"
