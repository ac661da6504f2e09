"""The ``aws-asg`` provider against moto's EC2 + Auto Scaling over HTTP, driven by the
capacity service on the embedded store: the group's desired capacity follows the decisions,
busy instances are protected from scale-in, a drained idle instance is terminated with the
desired capacity decremented and its termination lifecycle action completed.

The service's clock is a test clock; runner records and heartbeats are written to the real
runner store with the same clock (a runner per instance, labelled as the launch template's
boot script labels it). moto has no ``CompleteLifecycleAction`` and never holds an instance
in ``Terminating:Wait``: for the instances the autoscaler terminates itself the call is
observed on the client (botocore's event hook) as it goes out over HTTP. For terminations
the group starts by itself, ``moto_lifecycle`` gives the in-process moto server that one
call on moto's own records, and the tests check its effect there: the instance waits while
its runner is busy, then leaves the group and is terminated in moto's EC2.
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


@pytest.fixture
def moto_lifecycle(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, str]]:
    """moto (5.2.5, the newest) keeps lifecycle hooks but never runs them: nothing enters
    ``Terminating:Wait`` and ``CompleteLifecycleAction`` answers NotImplemented. This gives
    the in-process moto server the AWS behaviour of that one call, on moto's own records:
    the hook must exist on the group (as moto stores it) and the instance must wait in
    ``Terminating:Wait`` (ValidationError otherwise, as AWS answers); ``CONTINUE`` then
    removes the instance from the group and terminates it in moto's EC2. Each completion is
    recorded as moto saw it."""
    from moto.autoscaling.exceptions import ValidationError
    from moto.autoscaling.responses import AutoScalingResponse
    from moto.core.responses import EmptyResult

    completions: list[dict[str, str]] = []

    def complete_lifecycle_action(self: Any) -> Any:
        backend = self.autoscaling_backend
        group_name = self._get_param("AutoScalingGroupName")
        hook = self._get_param("LifecycleHookName")
        instance = self._get_param("InstanceId")
        result = self._get_param("LifecycleActionResult")
        if f"{group_name}_{hook}" not in backend.lifecycle_hooks:
            raise ValidationError(f"No Lifecycle Hook found with name {hook}")
        group = backend.autoscaling_groups[group_name]
        waiting = [
            s
            for s in group.instance_states
            if s.instance.id == instance and s.lifecycle_state == "Terminating:Wait"
        ]
        if not waiting:
            raise ValidationError(f"No active Lifecycle Action found with instance ID {instance}")
        completions.append(
            {"group": group_name, "hook": hook, "instance": instance, "result": result}
        )
        # CONTINUE or ABANDON: on a termination both let it go on (AWS)
        group.instance_states.remove(waiting[0])
        backend.ec2_backend.terminate_instances([instance])
        return EmptyResult()

    monkeypatch.setattr(
        AutoScalingResponse, "complete_lifecycle_action", complete_lifecycle_action, raising=False
    )
    return completions


def _group_scales_in(name: str, instance: str) -> None:
    """What the group does by itself on a scale-in it starts (a lower desired capacity, a
    rebalance): it picks ``instance`` and, having a termination hook, holds it in
    ``Terminating:Wait``. moto never does this; it is set on moto's records."""
    from moto.autoscaling.models import autoscaling_backends
    from moto.core import DEFAULT_ACCOUNT_ID

    group = autoscaling_backends[DEFAULT_ACCOUNT_ID][REGION].autoscaling_groups[name]
    group.desired_capacity -= 1
    (state,) = [s for s in group.instance_states if s.instance.id == instance]
    state.lifecycle_state = "Terminating:Wait"


def _instance_state(asg: Any, ec2: Any, instance: str) -> tuple[str | None, str]:
    """(the group's lifecycle state or None when no longer in a group, EC2's state)."""
    found = asg.describe_auto_scaling_instances(InstanceIds=[instance])["AutoScalingInstances"]
    res = ec2.describe_instances(InstanceIds=[instance])["Reservations"]
    return (found[0]["LifecycleState"] if found else None, res[0]["Instances"][0]["State"]["Name"])


def test_a_termination_the_group_starts_waits_for_the_drain_then_completes(
    rig: Any,
    group: tuple[str, Any],
    stores: Stores,
    moto_endpoint: str,
    moto_lifecycle: list[dict[str, str]],
) -> None:
    svc, clock, queue, _, _ = rig
    name, asg = group
    ec2 = boto3.client("ec2", region_name=REGION, endpoint_url=moto_endpoint)
    queue.depth, queue.oldest_at = 1, clock.t
    svc.reconcile(force=True)
    (instance,) = [i["InstanceId"] for i in _group(asg, name)["Instances"]]
    clock.t += 5
    rid = _join(stores, instance, clock.t)
    queue.depth, queue.oldest_at = 0, None
    _beat(stores, rid, clock.t, ["job_1"])
    svc.reconcile(force=True)

    # the group scales in by itself and picks the busy instance: the hook holds it
    _group_scales_in(name, instance)
    clock.t += 1
    _beat(stores, rid, clock.t, ["job_1"])
    d = svc.reconcile(force=True)
    assert d is not None and d["gpu-a10g"].drain == (instance,) and d["gpu-a10g"].launch == 0
    assert stores.runners.find_runner(rid).config.get("drain") is True  # type: ignore[union-attr]
    assert {h.id: h.state for h in svc.get(ADMIN, "gpu-a10g").hosts} == {instance: "stopping"}

    # busy: the lifecycle action is not completed, whatever time passes
    clock.t += 10
    _beat(stores, rid, clock.t, ["job_1"])
    d = svc.reconcile(force=True)
    assert d is not None and d["gpu-a10g"].terminate == ()
    assert moto_lifecycle == []
    assert _instance_state(asg, ec2, instance) == ("Terminating:Wait", "running")

    # the job is done: a settled heartbeat says nothing runs; the action completes and moto
    # terminates the instance
    clock.t += 3
    _beat(stores, rid, clock.t, [])
    d = svc.reconcile(force=True)
    assert d is not None and d["gpu-a10g"].terminate == (instance,)
    assert moto_lifecycle == [
        {"group": name, "hook": "drain", "instance": instance, "result": "CONTINUE"}
    ]
    assert _instance_state(asg, ec2, instance)[0] is None
    assert _instance_state(asg, ec2, instance)[1] in ("shutting-down", "terminated")
    assert _group(asg, name)["Instances"] == []
    events = svc.get(ADMIN, "gpu-a10g").events
    assert "error" not in {e.action for e in events}, [e.reason for e in events]


def test_a_lifecycle_action_that_cannot_complete_is_an_error_in_the_pool(
    rig: Any, group: tuple[str, Any], stores: Stores, moto_lifecycle: list[dict[str, str]]
) -> None:
    """A wrong hook name (moto answers ValidationError, as AWS does) is logged in the pool and
    retried every round; the instance keeps waiting."""
    svc, clock, queue, _, _ = rig
    name, asg = group
    rec = svc._store.get_pool("gpu-a10g")
    spec = dict(rec.spec)
    spec["provider"] = {"kind": "aws-asg", "settings": {"group": name, "lifecycle_hook": "nope"}}
    svc.put(ADMIN, "gpu-a10g", PoolSpec.model_validate(spec))
    queue.depth, queue.oldest_at = 1, clock.t
    svc.reconcile(force=True)
    (instance,) = [i["InstanceId"] for i in _group(asg, name)["Instances"]]
    queue.depth, queue.oldest_at = 0, None
    _group_scales_in(name, instance)  # before its runner ever registered
    clock.t += 1
    d = svc.reconcile(force=True)
    assert d is not None and d["gpu-a10g"].terminate == (instance,)
    errors = [e.reason for e in svc.get(ADMIN, "gpu-a10g").events if e.action == "error"]
    assert errors and "No Lifecycle Hook found with name nope" in errors[0]
    assert moto_lifecycle == []
    states = {i["InstanceId"]: i["LifecycleState"] for i in _group(asg, name)["Instances"]}
    assert states == {instance: "Terminating:Wait"}
