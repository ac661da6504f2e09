"""Optional container alternative: ``python -m control_plane serve`` as an ECS/Fargate service.

Same settings, same least-privilege storage policy as the Lambda stack (the task role), with
no API Gateway limits: long polls may use the full ``MaxWaitS``/``InferWaitS`` defaults. Put
it behind your own load balancer (``TargetGroupArn``) or service discovery.
"""

from __future__ import annotations

from typing import Any

from iac.common import (
    CAPACITY_CONDITIONS,
    CAPACITY_PARAMETERS,
    JWT_SECRET_CONDITIONS,
    JWT_SECRET_PARAMETERS,
    STORAGE_CONDITIONS,
    STORAGE_PARAMETERS,
    Template,
    capacity_policy,
    env_name,
    getatt,
    if_,
    ref,
    settings_environment,
    settings_parameters,
    storage_policy_statements,
    sub,
)

CONTAINER = "control-plane"


def ecs_parameters() -> dict[str, Any]:
    return {
        "Image": {
            "Type": "String",
            "Description": "Container image with gpufleet[control-plane] installed.",
        },
        "Cpu": {
            "Type": "String",
            "Default": "512",
            "AllowedValues": ["256", "512", "1024", "2048", "4096"],
            "Description": "Fargate task CPU units.",
        },
        "Memory": {
            "Type": "String",
            "Default": "1024",
            "Description": "Fargate task memory (MiB), valid for the chosen Cpu.",
        },
        "DesiredCount": {
            "Type": "Number",
            "Default": "2",
            "MinValue": 0,
            "Description": "Replicas; any number serve the same tables.",
        },
        "ContainerPort": {"Type": "Number", "Default": "8080", "Description": "Port served."},
        "Subnets": {"Type": "List<AWS::EC2::Subnet::Id>", "Description": "Task subnets."},
        "SecurityGroups": {
            "Type": "List<AWS::EC2::SecurityGroup::Id>",
            "Description": "Task security groups (allow ContainerPort from the load balancer).",
        },
        "AssignPublicIp": {
            "Type": "String",
            "Default": "DISABLED",
            "AllowedValues": ["ENABLED", "DISABLED"],
            "Description": "Public IP for tasks in public subnets without a NAT gateway.",
        },
        "TargetGroupArn": {
            "Type": "String",
            "Default": "",
            "Description": "Load balancer target group (ip type) for the service; empty for none.",
        },
    }


def _environment() -> list[Any]:
    env = settings_environment()
    jwt_env = env_name("jwt_secret")
    env.pop(jwt_env)
    items: list[Any] = [{"Name": k, "Value": v} for k, v in env.items()]
    plain = {"Name": jwt_env, "Value": ref("JwtSecret")}
    items.append(if_("UsesPlainJwtSecret", plain, ref("AWS::NoValue")))
    return items


def _assume(service: str) -> dict[str, Any]:
    return {
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Allow", "Principal": {"Service": service}, "Action": "sts:AssumeRole"}
        ],
    }


def ecs_template() -> Template:
    """The whole ECS stack."""
    parameters: dict[str, Any] = settings_parameters()
    parameters |= STORAGE_PARAMETERS
    parameters |= CAPACITY_PARAMETERS
    parameters |= JWT_SECRET_PARAMETERS
    parameters |= ecs_parameters()
    container: dict[str, Any] = {
        "Name": CONTAINER,
        "Image": ref("Image"),
        "Essential": True,
        "Command": [
            "python",
            "-m",
            "control_plane",
            "serve",
            "--host",
            "0.0.0.0",
            "--port",
            sub("${ContainerPort}"),
        ],
        "PortMappings": [{"ContainerPort": ref("ContainerPort"), "Protocol": "tcp"}],
        "Environment": _environment(),
        "Secrets": if_(
            "HasJwtSecretArn",
            [{"Name": env_name("jwt_secret"), "ValueFrom": ref("JwtSecretArn")}],
            ref("AWS::NoValue"),
        ),
        "LogConfiguration": {
            "LogDriver": "awslogs",
            "Options": {
                "awslogs-group": ref("LogGroup"),
                "awslogs-region": ref("AWS::Region"),
                "awslogs-stream-prefix": CONTAINER,
            },
        },
    }
    execution_statements: list[Any] = [
        {
            "Effect": "Allow",
            "Action": ["logs:CreateLogStream", "logs:PutLogEvents"],
            "Resource": getatt("LogGroup", "Arn"),
        },
        if_(
            "HasJwtSecretArn",
            {
                "Effect": "Allow",
                "Action": "secretsmanager:GetSecretValue",
                "Resource": ref("JwtSecretArn"),
            },
            ref("AWS::NoValue"),
        ),
    ]
    resources: dict[str, Any] = {
        "LogGroup": {
            "Type": "AWS::Logs::LogGroup",
            "DeletionPolicy": "Delete",
            "UpdateReplacePolicy": "Delete",
            "Properties": {"RetentionInDays": 30},
        },
        "Cluster": {"Type": "AWS::ECS::Cluster", "Properties": {}},
        "TaskRole": {
            "Type": "AWS::IAM::Role",
            "Properties": {
                "AssumeRolePolicyDocument": _assume("ecs-tasks.amazonaws.com"),
                "Policies": [
                    {
                        "PolicyName": "gpufleet-storage",
                        "PolicyDocument": {
                            "Version": "2012-10-17",
                            "Statement": storage_policy_statements(),
                        },
                    },
                    capacity_policy(),
                ],
            },
        },
        "ExecutionRole": {
            "Type": "AWS::IAM::Role",
            "Properties": {
                "AssumeRolePolicyDocument": _assume("ecs-tasks.amazonaws.com"),
                "ManagedPolicyArns": [
                    sub(
                        "arn:${AWS::Partition}:iam::aws:policy/service-role/"
                        "AmazonECSTaskExecutionRolePolicy"
                    )
                ],
                "Policies": [
                    {
                        "PolicyName": "gpufleet-execution",
                        "PolicyDocument": {
                            "Version": "2012-10-17",
                            "Statement": execution_statements,
                        },
                    }
                ],
            },
        },
        "TaskDefinition": {
            "Type": "AWS::ECS::TaskDefinition",
            "Properties": {
                "Family": sub("${AWS::StackName}-control-plane"),
                "RequiresCompatibilities": ["FARGATE"],
                "NetworkMode": "awsvpc",
                "Cpu": ref("Cpu"),
                "Memory": ref("Memory"),
                "TaskRoleArn": getatt("TaskRole", "Arn"),
                "ExecutionRoleArn": getatt("ExecutionRole", "Arn"),
                "ContainerDefinitions": [container],
            },
        },
        "Service": {
            "Type": "AWS::ECS::Service",
            "Properties": {
                "Cluster": ref("Cluster"),
                "LaunchType": "FARGATE",
                "DesiredCount": ref("DesiredCount"),
                "TaskDefinition": ref("TaskDefinition"),
                "NetworkConfiguration": {
                    "AwsvpcConfiguration": {
                        "Subnets": ref("Subnets"),
                        "SecurityGroups": ref("SecurityGroups"),
                        "AssignPublicIp": ref("AssignPublicIp"),
                    }
                },
                "LoadBalancers": if_(
                    "HasTargetGroup",
                    [
                        {
                            "ContainerName": CONTAINER,
                            "ContainerPort": ref("ContainerPort"),
                            "TargetGroupArn": ref("TargetGroupArn"),
                        }
                    ],
                    ref("AWS::NoValue"),
                ),
            },
        },
    }
    return {
        "AWSTemplateFormatVersion": "2010-09-09",
        "Description": "gpufleet control plane as an ECS/Fargate service (optional alternative)",
        "Parameters": parameters,
        "Conditions": {
            **STORAGE_CONDITIONS,
            **CAPACITY_CONDITIONS,
            **JWT_SECRET_CONDITIONS,
            "UsesPlainJwtSecret": {
                "Fn::And": [
                    {"Fn::Not": [{"Condition": "HasJwtSecretArn"}]},
                    {"Condition": "HasJwtSecret"},
                ]
            },
            "HasTargetGroup": {"Fn::Not": [{"Fn::Equals": [ref("TargetGroupArn"), ""]}]},
        },
        "Resources": resources,
        "Outputs": {
            "ClusterName": {"Value": ref("Cluster"), "Description": "ECS cluster"},
            "ServiceName": {"Value": getatt("Service", "Name"), "Description": "ECS service"},
            "TaskRoleArn": {
                "Value": getatt("TaskRole", "Arn"),
                "Description": "Role of the tasks (tables and bucket only)",
            },
        },
    }
