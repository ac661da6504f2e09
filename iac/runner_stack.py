"""Optional RUNNER stack: one capacity pool's GPU hosts as an EC2 Auto Scaling group.

The launch template boots the NVIDIA GPU AMI and runs the runner image with the GPUs, the
Docker socket (for its Triton container) and the pool's join token (read from Secrets
Manager at boot, passed by name, never on a command line); the runner is labelled with the
pool and its instance id (``gpufleet.host``), which is how the control plane joins the
instance to its runner. The group starts at 0 and has no desired capacity of its own: the
control plane's ``aws-asg`` provider sets it (docs/capacity.md). A termination lifecycle
hook holds an instance the group terminates by itself until it is drained or the timeout
passes; instances the control plane stops are drained already and released at once.
"""

from __future__ import annotations

from typing import Any

from iac.common import Template, getatt, ref, sub

HOOK = "gpufleet-drain"

USER_DATA = """#!/bin/bash
set -euo pipefail
INSTANCE_ID=$(cloud-init query v1.instance_id)
export GPUFLEET_RUNNER_JOIN_TOKEN=$(aws secretsmanager get-secret-value \\
  --region ${AWS::Region} --secret-id ${JoinTokenSecretArn} --query SecretString --output text)
LABELS="{\\"gpufleet.pool\\":\\"${PoolName}\\",\\"gpufleet.host\\":\\"$INSTANCE_ID\\"}"
mkdir -p /srv/gpufleet/models /srv/gpufleet/state
chown -R 10001:10001 /srv/gpufleet
docker run -d --name gpufleet-runner --restart unless-stopped --network host --gpus all \\
  --group-add "$(stat -c %g /var/run/docker.sock)" \\
  -v /var/run/docker.sock:/var/run/docker.sock -v /srv/gpufleet:/srv/gpufleet \\
  -e GPUFLEET_RUNNER_JOIN_TOKEN \\
  -e GPUFLEET_RUNNER_CONTROL_PLANE_URL=${ControlPlaneUrl} \\
  -e GPUFLEET_RUNNER_REGION=${RunnerRegion} \\
  -e GPUFLEET_RUNNER_NAME="$INSTANCE_ID" \\
  -e GPUFLEET_RUNNER_LABELS="$LABELS" \\
  -e GPUFLEET_RUNNER_MODEL_REPOSITORY=/srv/gpufleet/models \\
  -e GPUFLEET_RUNNER_STATE_DIR=/srv/gpufleet/state \\
  -e GPUFLEET_RUNNER_TRITON_IMAGE=${TritonImage} \\
  ${RunnerImage}
"""


def runner_parameters() -> dict[str, Any]:
    return {
        "PoolName": {
            "Type": "String",
            "AllowedPattern": "^[a-z0-9][a-z0-9-]{0,62}$",
            "Description": "The capacity pool (PUT /v1/pools/{name}) these hosts belong to.",
        },
        "ImageId": {
            "Type": "AWS::EC2::Image::Id",
            "Description": "NVIDIA GPU-Optimized AMI (driver, Docker, NVIDIA container toolkit) "
            "in this region.",
        },
        "InstanceType": {"Type": "String", "Default": "g5.xlarge", "Description": "GPU type."},
        "MaxHosts": {
            "Type": "Number",
            "Default": "4",
            "MinValue": 1,
            "Description": "The group's MaxSize (the pool's max_hosts should not exceed it).",
        },
        "Subnets": {"Type": "List<AWS::EC2::Subnet::Id>", "Description": "Host subnets."},
        "SecurityGroups": {
            "Type": "List<AWS::EC2::SecurityGroup::Id>",
            "Description": "Host security groups (outbound HTTPS to the control plane).",
        },
        "RunnerImage": {"Type": "String", "Description": "The gpufleet runner image."},
        "TritonImage": {
            "Type": "String",
            "Default": "nvcr.io/nvidia/tritonserver:24.10-py3",
            "Description": "Triton image the runner starts.",
        },
        "ControlPlaneUrl": {"Type": "String", "Description": "URL runners reach the API at."},
        "RunnerRegion": {
            "Type": "String",
            "Default": "default",
            "Description": "Region the runners register in (the pool's region).",
        },
        "JoinTokenSecretArn": {
            "Type": "String",
            "Description": "Secrets Manager secret holding the pool's join token (gpufleet "
            "admin pools join-token <PoolName>: shared by every instance, it registers up to "
            "the control plane's capacity_pool_token_uses runners until it expires; replace "
            "it before).",
        },
        "DrainTimeoutS": {
            "Type": "Number",
            "Default": "900",
            "MinValue": 30,
            "MaxValue": 7200,
            "Description": "How long a terminating instance waits to drain (lifecycle hook).",
        },
    }


def runner_template() -> Template:
    """The whole runner stack."""
    resources: dict[str, Any] = {
        "InstanceRole": {
            "Type": "AWS::IAM::Role",
            "Properties": {
                "AssumeRolePolicyDocument": {
                    "Version": "2012-10-17",
                    "Statement": [
                        {
                            "Effect": "Allow",
                            "Principal": {"Service": "ec2.amazonaws.com"},
                            "Action": "sts:AssumeRole",
                        }
                    ],
                },
                "Policies": [
                    {
                        "PolicyName": "join-token",
                        "PolicyDocument": {
                            "Version": "2012-10-17",
                            "Statement": [
                                {
                                    "Effect": "Allow",
                                    "Action": "secretsmanager:GetSecretValue",
                                    "Resource": ref("JoinTokenSecretArn"),
                                }
                            ],
                        },
                    }
                ],
            },
        },
        "InstanceProfile": {
            "Type": "AWS::IAM::InstanceProfile",
            "Properties": {"Roles": [ref("InstanceRole")]},
        },
        "LaunchTemplate": {
            "Type": "AWS::EC2::LaunchTemplate",
            "Properties": {
                "LaunchTemplateData": {
                    "ImageId": ref("ImageId"),
                    "InstanceType": ref("InstanceType"),
                    "IamInstanceProfile": {"Arn": getatt("InstanceProfile", "Arn")},
                    "SecurityGroupIds": ref("SecurityGroups"),
                    "MetadataOptions": {"HttpTokens": "required", "HttpEndpoint": "enabled"},
                    "UserData": {"Fn::Base64": sub(USER_DATA)},
                    "TagSpecifications": [
                        {
                            "ResourceType": "instance",
                            "Tags": [{"Key": "gpufleet:pool", "Value": ref("PoolName")}],
                        }
                    ],
                }
            },
        },
        "Group": {
            "Type": "AWS::AutoScaling::AutoScalingGroup",
            "Properties": {
                "AutoScalingGroupName": sub("gpufleet-${PoolName}"),
                "MinSize": "0",
                "MaxSize": ref("MaxHosts"),
                "VPCZoneIdentifier": ref("Subnets"),
                "LaunchTemplate": {
                    "LaunchTemplateId": ref("LaunchTemplate"),
                    "Version": getatt("LaunchTemplate", "LatestVersionNumber"),
                },
                "LifecycleHookSpecificationList": [
                    {
                        "LifecycleHookName": HOOK,
                        "LifecycleTransition": "autoscaling:EC2_INSTANCE_TERMINATING",
                        "HeartbeatTimeout": ref("DrainTimeoutS"),
                        "DefaultResult": "CONTINUE",
                    }
                ],
            },
        },
    }
    return {
        "AWSTemplateFormatVersion": "2010-09-09",
        "Description": "gpufleet runner hosts of one capacity pool (EC2 Auto Scaling group)",
        "Parameters": runner_parameters(),
        "Resources": resources,
        "Outputs": {
            "GroupName": {
                "Value": ref("Group"),
                "Description": "provider.settings.group of the pool",
            },
            "LifecycleHook": {
                "Value": HOOK,
                "Description": "provider.settings.lifecycle_hook of the pool",
            },
        },
    }
