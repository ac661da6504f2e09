"""The ``aws-asg`` provider: one EC2 Auto Scaling group per pool, through boto3.

The group's launch template starts the runner on each instance (iac/runner.yaml: the NVIDIA
GPU AMI, user data that runs the runner image with the pool's join token and labels the
runner ``gpufleet.host=<instance id>`` from the instance metadata). The provider only asks
the group:

- start N: ``SetDesiredCapacity`` to the current desired capacity + N (at most the group's
  ``MaxSize``); Auto Scaling picks subnets and instance ids.
- stop one: ``TerminateInstanceInAutoScalingGroup`` with ``ShouldDecrementDesiredCapacity``,
  so the group does not replace it. With a termination lifecycle hook (``lifecycle_hook``),
  the instance waits in ``Terminating:Wait`` until the autoscaler says ``CONTINUE``; it does
  so at once for hosts it stops itself (they are drained already).
- terminations the group starts by itself (a scale-in, an AZ rebalance, an instance
  refresh) wait in ``Terminating:Wait`` when the group has the termination hook: such an
  instance is listed as ``terminating``; the autoscaler drains its runner and calls ``stop``
  once it runs nothing, which completes the lifecycle action (``CONTINUE``). A failure to
  complete it then is an error (logged in the pool, retried next round).
- protect: ``SetInstanceProtection`` (``ProtectedFromScaleIn``) for busy hosts, so that a
  scale-in the group starts by itself (a lowered desired capacity, a rebalance) never picks
  a host that holds a lease.

Pool settings (``provider.settings``): ``group`` (required), ``region`` (default: the
control plane's ``aws_region``), ``lifecycle_hook`` (the name of the group's termination
hook, if any). AWS errors become ``Unavailable``.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Mapping
from typing import Any

from control_plane.errors import InvalidRequest, Unavailable
from control_plane.services.capacity.providers.base import (
    RUNNING,
    STARTING,
    TERMINATING,
    Host,
    Launch,
    PoolConfig,
)

log = logging.getLogger(__name__)

_FIELD = "provider.settings"
_STARTING = ("Pending", "Pending:Wait", "Pending:Proceed", "Warmed:Pending")
_RUNNING = ("InService", "Standby", "EnteringStandby")
_TERMINATING = ("Terminating:Wait",)


@contextlib.contextmanager
def _aws(what: str) -> Iterator[None]:
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        yield
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        raise Unavailable(f"auto scaling error during {what}: {code}: {exc}") from exc
    except BotoCoreError as exc:
        raise Unavailable(f"auto scaling unreachable during {what}: {exc}") from exc


class AsgProvider:
    """Hosts of a pool as instances of its Auto Scaling group (see the module docstring)."""

    kind = "aws-asg"

    def __init__(self, region: str, endpoint_url: str | None = None) -> None:
        self._region = region
        self._endpoint = endpoint_url
        self._clients: dict[str, tuple[Any, Any]] = {}

    def _client(self, pool: PoolConfig) -> tuple[Any, Any]:
        region = str(pool.settings.get("region") or self._region)
        if region not in self._clients:
            import boto3
            from botocore.config import Config

            cfg = Config(retries={"max_attempts": 3, "mode": "standard"}, read_timeout=30)
            session = boto3.session.Session(region_name=region)
            self._clients[region] = (
                session.client("autoscaling", endpoint_url=self._endpoint, config=cfg),
                session.client("ec2", endpoint_url=self._endpoint, config=cfg),
            )
        return self._clients[region]

    def validate(self, settings: Mapping[str, Any]) -> None:
        known = {"group", "region", "lifecycle_hook"}
        for key in settings:
            if key not in known:
                raise InvalidRequest(
                    f"unknown aws-asg provider setting {key!r} (known: {sorted(known)})",
                    field=f"{_FIELD}.{key}",
                )
        group = settings.get("group")
        if not isinstance(group, str) or not group.strip():
            raise InvalidRequest(
                "the Auto Scaling group's name is required", field=f"{_FIELD}.group"
            )
        for key in ("region", "lifecycle_hook"):
            v = settings.get(key)
            if v is not None and (not isinstance(v, str) or not v.strip()):
                raise InvalidRequest(f"{key} must be a non-empty string", field=f"{_FIELD}.{key}")

    def _group(self, pool: PoolConfig) -> dict[str, Any]:
        asg, _ = self._client(pool)
        name = str(pool.settings["group"])
        with _aws("describe the group"):
            groups = asg.describe_auto_scaling_groups(AutoScalingGroupNames=[name])[
                "AutoScalingGroups"
            ]
        if not groups:
            raise Unavailable(f"no Auto Scaling group {name!r}")
        return dict(groups[0])

    def list_hosts(self, pool: PoolConfig) -> list[Host]:
        group = self._group(pool)
        instances = [
            i
            for i in group.get("Instances", [])
            if i["LifecycleState"] in _STARTING + _RUNNING + _TERMINATING
        ]
        if not instances:
            return []
        _, ec2 = self._client(pool)
        ids = [i["InstanceId"] for i in instances]
        launched: dict[str, float] = {}
        with _aws("describe instances"):
            for res in ec2.describe_instances(InstanceIds=ids).get("Reservations", []):
                for inst in res.get("Instances", []):
                    launched[inst["InstanceId"]] = inst["LaunchTime"].timestamp()
        return sorted(
            (
                Host(
                    id=i["InstanceId"],
                    launched_at=launched.get(i["InstanceId"], 0.0),
                    state=(
                        STARTING
                        if i["LifecycleState"] in _STARTING
                        else TERMINATING
                        if i["LifecycleState"] in _TERMINATING
                        else RUNNING
                    ),
                    detail=f"{i['LifecycleState']}, {i.get('AvailabilityZone', '')}",
                )
                for i in instances
            ),
            key=lambda h: (h.launched_at, h.id),
        )

    def start(self, pool: PoolConfig, launches: list[Launch]) -> list[str]:
        """Raise the desired capacity by ``len(launches)`` (the group's instances join with
        the pool's token from the launch template: per-launch tokens are not used)."""
        group = self._group(pool)
        desired = min(int(group["DesiredCapacity"]) + len(launches), int(group["MaxSize"]))
        asg, _ = self._client(pool)
        with _aws("set the desired capacity"):
            asg.set_desired_capacity(
                AutoScalingGroupName=group["AutoScalingGroupName"],
                DesiredCapacity=desired,
                HonorCooldown=False,
            )
        return []

    def stop(self, pool: PoolConfig, host_id: str) -> None:
        from botocore.exceptions import BotoCoreError, ClientError
        from botocore.parsers import ResponseParserError

        members = {i["InstanceId"]: i["LifecycleState"] for i in self._group(pool)["Instances"]}
        if host_id not in members:
            return  # gone already
        asg, _ = self._client(pool)
        waiting = members[host_id].startswith("Terminating")  # the group's own termination
        if not waiting:
            with _aws("terminate an instance"):
                asg.terminate_instance_in_auto_scaling_group(
                    InstanceId=host_id, ShouldDecrementDesiredCapacity=True
                )
        hook = pool.settings.get("lifecycle_hook")
        if hook:
            try:  # the host is drained already: let the termination go on now
                asg.complete_lifecycle_action(
                    LifecycleHookName=str(hook),
                    AutoScalingGroupName=str(pool.settings["group"]),
                    InstanceId=host_id,
                    LifecycleActionResult="CONTINUE",
                )
            except (ClientError, BotoCoreError, ResponseParserError) as exc:
                if waiting:  # it waits for this call: say so in the pool, retry next round
                    raise Unavailable(
                        f"cannot complete the lifecycle action of {host_id} (hook {hook}): {exc}"
                    ) from exc
                # just terminated by us: the hook's heartbeat timeout and default result decide
                log.warning(
                    "cannot complete the lifecycle action of %s (hook %s): %s", host_id, hook, exc
                )

    def protect(self, pool: PoolConfig, host_ids: list[str], protected: bool) -> None:
        if not host_ids:
            return
        asg, _ = self._client(pool)
        with _aws("set instance protection"):
            asg.set_instance_protection(
                InstanceIds=list(host_ids),
                AutoScalingGroupName=str(pool.settings["group"]),
                ProtectedFromScaleIn=protected,
            )
