"""iac/runner.yaml (one capacity pool's GPU hosts): what the aws-asg provider relies on.
(cfn-lint runs on it with the other templates in test_templates.py.)"""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from control_plane.services.capacity.providers.base import HOST_LABEL, POOL_LABEL
from iac import generate
from iac.common import CAPACITY_ASG_ACTIONS, CAPACITY_DESCRIBE_ACTIONS


def _template() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((generate.IAC_DIR / "runner.yaml").read_text())
    return data


def test_group_starts_empty_and_leaves_desired_capacity_to_the_control_plane() -> None:
    group = _template()["Resources"]["Group"]["Properties"]
    assert group["MinSize"] == "0"
    assert "DesiredCapacity" not in group
    (hook,) = group["LifecycleHookSpecificationList"]
    assert hook["LifecycleTransition"] == "autoscaling:EC2_INSTANCE_TERMINATING"
    assert hook["DefaultResult"] == "CONTINUE"
    outputs = _template()["Outputs"]
    assert outputs["LifecycleHook"]["Value"] == hook["LifecycleHookName"]


def test_user_data_joins_the_runner_to_its_pool_and_instance() -> None:
    data = _template()["Resources"]["LaunchTemplate"]["Properties"]["LaunchTemplateData"]
    assert data["MetadataOptions"]["HttpTokens"] == "required"
    script = data["UserData"]["Fn::Base64"]["Fn::Sub"]
    assert f'\\"{POOL_LABEL}\\":\\"${{PoolName}}\\"' in script
    assert f'\\"{HOST_LABEL}\\":\\"$INSTANCE_ID\\"' in script
    assert "--gpus all" in script and "--network host" in script
    # the token is exported and passed by name: never on a command line
    assert "-e GPUFLEET_RUNNER_JOIN_TOKEN \\" in script
    assert "GPUFLEET_RUNNER_JOIN_TOKEN=$" not in script.split("docker run", 1)[1]


def test_instances_may_read_only_the_join_token() -> None:
    role = _template()["Resources"]["InstanceRole"]["Properties"]
    (policy,) = role["Policies"]
    (stmt,) = policy["PolicyDocument"]["Statement"]
    assert stmt == {
        "Effect": "Allow",
        "Action": "secretsmanager:GetSecretValue",
        "Resource": {"Ref": "JoinTokenSecretArn"},
    }


@pytest.mark.parametrize(
    ("template", "role"), [("compute.yaml", "FunctionRole"), ("ecs.yaml", "TaskRole")]
)
def test_control_plane_may_change_only_the_pools_groups(template: str, role: str) -> None:
    data = yaml.safe_load((generate.IAC_DIR / template).read_text())
    policies = data["Resources"][role]["Properties"]["Policies"]
    (cond,) = [p for p in policies if "Fn::If" in p]
    name, policy, otherwise = cond["Fn::If"]
    assert name == "HasCapacityGroups" and otherwise == {"Ref": "AWS::NoValue"}
    change, describe = policy["PolicyDocument"]["Statement"]
    assert change["Action"] == CAPACITY_ASG_ACTIONS
    assert change["Resource"] == {"Ref": "CapacityGroupArns"}
    assert describe["Action"] == CAPACITY_DESCRIBE_ACTIONS  # no resource-level permissions
    assert all(a.split(":")[1].startswith("Describe") for a in describe["Action"])
    assert data["Parameters"]["CapacityGroupArns"]["Default"] == ""
