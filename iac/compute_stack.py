"""The COMPUTE stack: the control plane as a Lambda function behind an HTTP API.

The same Starlette app as ``python -m control_plane serve``, through Mangum
(``control_plane.lambda_handler.handler``). Every setting is a parameter and reaches the
function as its ``GPUFLEET_*`` environment variable. The role may touch only the tables of
``definitions.TABLES`` (and their indexes) and the one bucket, plus its own log group.

A scheduled EventBridge rule invokes the function once a minute with ``{"gpufleet": "sweep"}``
so that expired leases and queue TTLs are swept even when no request arrives (a Lambda
function runs no background task between invocations).
"""

from __future__ import annotations

from typing import Any

from iac.common import (
    CAPACITY_CONDITIONS,
    CAPACITY_PARAMETERS,
    JWT_SECRET_CONDITIONS,
    JWT_SECRET_PARAMETERS,
    LAMBDA_DEFAULTS,
    STORAGE_CONDITIONS,
    STORAGE_PARAMETERS,
    Template,
    capacity_policy,
    getatt,
    if_,
    ref,
    settings_environment,
    settings_parameters,
    storage_policy_statements,
    sub,
)

HANDLER = "control_plane.lambda_handler.handler"
SWEEP_EVENT = {"gpufleet": "sweep"}

FUNCTION_NAME = "${AWS::StackName}-api"


def lambda_parameters() -> dict[str, Any]:
    return {
        "CodeBucket": {
            "Type": "String",
            "Description": "Bucket holding the function's code zip (the deploy script "
            "uploads it to the data bucket under deploy/).",
        },
        "CodeKey": {"Type": "String", "Description": "Key of the code zip in CodeBucket."},
        "Runtime": {
            "Type": "String",
            "Default": "python3.12",
            "AllowedValues": ["python3.11", "python3.12"],
            "Description": "Lambda Python runtime (the code zip is built for it).",
        },
        "Architecture": {
            "Type": "String",
            "Default": "x86_64",
            "AllowedValues": ["x86_64", "arm64"],
            "Description": "Lambda architecture (the code zip is built for it).",
        },
        "MemorySize": {
            "Type": "Number",
            "Default": "1024",
            "MinValue": 256,
            "MaxValue": 10240,
            "Description": "Memory of the function in MB (CPU grows with it).",
        },
        "ReservedConcurrency": {
            "Type": "Number",
            "Default": "-1",
            "MinValue": -1,
            "Description": "Reserved concurrent executions; -1 leaves it unreserved.",
        },
        "LogRetentionDays": {
            "Type": "Number",
            "Default": "30",
            "AllowedValues": ["1", "3", "5", "7", "14", "30", "60", "90", "180", "365"],
            "Description": "Retention of the function's log group.",
        },
    }


def role_resource() -> dict[str, Any]:
    log_group_arn = getatt("LogGroup", "Arn")
    return {
        "Type": "AWS::IAM::Role",
        "Properties": {
            "AssumeRolePolicyDocument": {
                "Version": "2012-10-17",
                "Statement": [
                    {
                        "Effect": "Allow",
                        "Principal": {"Service": "lambda.amazonaws.com"},
                        "Action": "sts:AssumeRole",
                    }
                ],
            },
            "Policies": [
                {
                    "PolicyName": "gpufleet-storage",
                    "PolicyDocument": {
                        "Version": "2012-10-17",
                        "Statement": storage_policy_statements(),
                    },
                },
                capacity_policy(),
                {
                    "PolicyName": "gpufleet-logs",
                    "PolicyDocument": {
                        "Version": "2012-10-17",
                        "Statement": [
                            {
                                "Effect": "Allow",
                                "Action": ["logs:CreateLogStream", "logs:PutLogEvents"],
                                "Resource": log_group_arn,
                            }
                        ],
                    },
                },
            ],
        },
    }


def function_resource() -> dict[str, Any]:
    return {
        "Type": "AWS::Lambda::Function",
        "DependsOn": ["LogGroup"],
        "Properties": {
            "FunctionName": sub(FUNCTION_NAME),
            "Description": "gpufleet control plane (Starlette app through Mangum)",
            "Runtime": ref("Runtime"),
            "Architectures": [ref("Architecture")],
            "Handler": HANDLER,
            "Code": {"S3Bucket": ref("CodeBucket"), "S3Key": ref("CodeKey")},
            "Role": getatt("FunctionRole", "Arn"),
            "MemorySize": ref("MemorySize"),
            # API Gateway answers 503 after 30 s; the long polls stay below (MaxWaitS, …).
            "Timeout": 30,
            "ReservedConcurrentExecutions": if_(
                "HasReservedConcurrency", ref("ReservedConcurrency"), ref("AWS::NoValue")
            ),
            "Environment": {"Variables": settings_environment()},
        },
    }


def http_api_resources() -> dict[str, Any]:
    return {
        "HttpApi": {
            "Type": "AWS::ApiGatewayV2::Api",
            "Properties": {
                "Name": sub("${AWS::StackName}"),
                "ProtocolType": "HTTP",
                "Description": "gpufleet control plane API (/v1, /v2)",
            },
        },
        "HttpApiIntegration": {
            "Type": "AWS::ApiGatewayV2::Integration",
            "Properties": {
                "ApiId": ref("HttpApi"),
                "IntegrationType": "AWS_PROXY",
                "IntegrationUri": getatt("Function", "Arn"),
                "PayloadFormatVersion": "2.0",
                "TimeoutInMillis": 30000,
            },
        },
        "HttpApiRoute": {
            "Type": "AWS::ApiGatewayV2::Route",
            "Properties": {
                "ApiId": ref("HttpApi"),
                "RouteKey": "$default",
                "Target": sub("integrations/${HttpApiIntegration}"),
            },
        },
        "HttpApiStage": {
            "Type": "AWS::ApiGatewayV2::Stage",
            "Properties": {"ApiId": ref("HttpApi"), "StageName": "$default", "AutoDeploy": True},
        },
        "HttpApiPermission": {
            "Type": "AWS::Lambda::Permission",
            "Properties": {
                "Action": "lambda:InvokeFunction",
                "FunctionName": ref("Function"),
                "Principal": "apigateway.amazonaws.com",
                "SourceArn": sub(
                    "arn:${AWS::Partition}:execute-api:${AWS::Region}:${AWS::AccountId}:${HttpApi}/*"
                ),
            },
        },
    }


def sweep_resources() -> dict[str, Any]:
    return {
        "SweepSchedule": {
            "Type": "AWS::Events::Rule",
            "Properties": {
                "Description": "Sweep expired leases and queue TTLs once a minute",
                "ScheduleExpression": "rate(1 minute)",
                "State": "ENABLED",
                "Targets": [
                    {
                        "Id": "sweep",
                        "Arn": getatt("Function", "Arn"),
                        "Input": '{"gpufleet": "sweep"}',
                    }
                ],
            },
        },
        "SweepPermission": {
            "Type": "AWS::Lambda::Permission",
            "Properties": {
                "Action": "lambda:InvokeFunction",
                "FunctionName": ref("Function"),
                "Principal": "events.amazonaws.com",
                "SourceArn": getatt("SweepSchedule", "Arn"),
            },
        },
    }


def compute_template() -> Template:
    """The whole compute stack."""
    parameters: dict[str, Any] = settings_parameters(LAMBDA_DEFAULTS)
    parameters |= STORAGE_PARAMETERS
    parameters |= CAPACITY_PARAMETERS
    parameters |= JWT_SECRET_PARAMETERS
    parameters |= lambda_parameters()
    resources: dict[str, Any] = {
        "LogGroup": {
            "Type": "AWS::Logs::LogGroup",
            "DeletionPolicy": "Delete",
            "UpdateReplacePolicy": "Delete",
            "Properties": {
                "LogGroupName": sub(f"/aws/lambda/{FUNCTION_NAME}"),
                "RetentionInDays": ref("LogRetentionDays"),
            },
        },
        "FunctionRole": role_resource(),
        "Function": function_resource(),
        **http_api_resources(),
        **sweep_resources(),
    }
    return {
        "AWSTemplateFormatVersion": "2010-09-09",
        "Description": "gpufleet control plane: Lambda (Mangum) behind an HTTP API",
        "Parameters": parameters,
        "Conditions": {
            **STORAGE_CONDITIONS,
            **CAPACITY_CONDITIONS,
            **JWT_SECRET_CONDITIONS,
            "HasReservedConcurrency": {
                "Fn::Not": [{"Fn::Equals": [ref("ReservedConcurrency"), "-1"]}]
            },
        },
        "Resources": resources,
        "Outputs": {
            "ApiUrl": {
                "Description": "GPUFLEET_URL of the SDK and CLI (the control plane's base URL)",
                "Value": getatt("HttpApi", "ApiEndpoint"),
            },
            "FunctionName": {"Value": ref("Function"), "Description": "The Lambda function"},
            "FunctionRoleArn": {
                "Value": getatt("FunctionRole", "Arn"),
                "Description": "Role of the function (tables and bucket only)",
            },
            "TablePrefix": {
                "Value": ref("TablePrefix"),
                "Description": "GPUFLEET_TABLE_PREFIX the function runs with",
            },
            "Bucket": {"Value": ref("Bucket"), "Description": "GPUFLEET_BUCKET the function uses"},
            "AwsRegion": {
                "Value": ref("AWS::Region"),
                "Description": "GPUFLEET_AWS_REGION the function runs with",
            },
        },
    }
