"""The DATA stack: every table of ``definitions.TABLES`` and the bucket, nothing that runs code.

Kept apart from the compute stack so that the state outlives any redeploy of the code (tables
and bucket are ``Retain``ed) and so that it can be deployed whole into moto's CloudFormation.
"""

from __future__ import annotations

from typing import Any

from control_plane.storage import definitions
from iac.common import (
    NO_VALUE,
    STORAGE_CONDITIONS,
    STORAGE_PARAMETERS,
    Template,
    env_name,
    getatt,
    if_,
    ref,
    sub,
)


def table_logical_id(name: str) -> str:
    """``jobs`` → ``JobsTable``."""
    return "".join(part.capitalize() for part in name.split("_")) + "Table"


def table_resource(name: str) -> dict[str, Any]:
    """``AWS::DynamoDB::Table`` from the table's CreateTable arguments."""
    spec = definitions.create_table_kwargs(name, "unused")
    props: dict[str, Any] = {
        "TableName": sub(f"${{TablePrefix}}-{name}"),
        "BillingMode": spec["BillingMode"],
        "AttributeDefinitions": spec["AttributeDefinitions"],
        "KeySchema": spec["KeySchema"],
    }
    if spec.get("GlobalSecondaryIndexes"):
        props["GlobalSecondaryIndexes"] = spec["GlobalSecondaryIndexes"]
    if definitions.has_ttl(name):
        props["TimeToLiveSpecification"] = {
            "AttributeName": definitions.TTL_ATTRIBUTE,
            "Enabled": True,
        }
    props["PointInTimeRecoverySpecification"] = {"PointInTimeRecoveryEnabled": True}
    props["SSESpecification"] = {"SSEEnabled": True}
    props["DeletionProtectionEnabled"] = ref("DeletionProtection")
    props["Tags"] = [{"Key": "gpufleet:table", "Value": name}]
    return {
        "Type": "AWS::DynamoDB::Table",
        "DeletionPolicy": "Retain",
        "UpdateReplacePolicy": "Retain",
        "Properties": props,
    }


def lifecycle_rules() -> list[dict[str, Any]]:
    """Expire payloads and results after ``BUCKET_LIFECYCLE_DAYS``; drop stale multipart parts."""
    rules: list[dict[str, Any]] = []
    for prefix, days in definitions.BUCKET_LIFECYCLE_DAYS.items():
        rules.append(
            {
                "Id": f"expire-{prefix.strip('/')}",
                "Status": "Enabled",
                "Prefix": prefix,
                "ExpirationInDays": days,
                "NoncurrentVersionExpiration": {"NoncurrentDays": 1},
            }
        )
    rules.append(
        {
            "Id": "abort-incomplete-multipart",
            "Status": "Enabled",
            "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 2},
        }
    )
    return rules


def bucket_resource() -> dict[str, Any]:
    encryption_default = {
        "SSEAlgorithm": ref("BucketEncryption"),
        "KMSMasterKeyID": if_("UsesCustomKmsKey", ref("BucketKmsKeyArn"), NO_VALUE),
    }
    return {
        "Type": "AWS::S3::Bucket",
        "DeletionPolicy": "Retain",
        "UpdateReplacePolicy": "Retain",
        "Properties": {
            "BucketName": ref("Bucket"),
            "BucketEncryption": {
                "ServerSideEncryptionConfiguration": [
                    {
                        "ServerSideEncryptionByDefault": encryption_default,
                        "BucketKeyEnabled": if_("UsesKms", True, NO_VALUE),
                    }
                ]
            },
            "PublicAccessBlockConfiguration": {
                "BlockPublicAcls": True,
                "BlockPublicPolicy": True,
                "IgnorePublicAcls": True,
                "RestrictPublicBuckets": True,
            },
            "OwnershipControls": {"Rules": [{"ObjectOwnership": "BucketOwnerEnforced"}]},
            "VersioningConfiguration": {"Status": ref("BucketVersioning")},
            "LifecycleConfiguration": {"Rules": lifecycle_rules()},
            "Tags": [{"Key": "gpufleet:bucket", "Value": "models-payloads-results"}],
        },
    }


def bucket_policy_resource() -> dict[str, Any]:
    """Deny every request that does not use TLS."""
    return {
        "Type": "AWS::S3::BucketPolicy",
        "Properties": {
            "Bucket": ref("DataBucket"),
            "PolicyDocument": {
                "Version": "2012-10-17",
                "Statement": [
                    {
                        "Sid": "DenyInsecureTransport",
                        "Effect": "Deny",
                        "Principal": "*",
                        "Action": "s3:*",
                        "Resource": [
                            getatt("DataBucket", "Arn"),
                            sub("${DataBucket.Arn}/*"),
                        ],
                        "Condition": {"Bool": {"aws:SecureTransport": "false"}},
                    }
                ],
            },
        },
    }


def data_template() -> Template:
    """The whole data stack."""
    resources: dict[str, Any] = {
        table_logical_id(name): table_resource(name) for name in definitions.TABLES
    }
    resources["DataBucket"] = bucket_resource()
    resources["DataBucketPolicy"] = bucket_policy_resource()
    outputs: dict[str, Any] = {
        "TablePrefix": {
            "Description": f"{env_name('table_prefix')} of the control plane",
            "Value": ref("TablePrefix"),
        },
        "Bucket": {
            "Description": f"{env_name('bucket')} of the control plane",
            "Value": ref("DataBucket"),
        },
        "AwsRegion": {
            "Description": f"{env_name('aws_region')} of the control plane",
            "Value": ref("AWS::Region"),
        },
        "BucketKmsKeyArn": {
            "Description": "BucketKmsKeyArn parameter of the compute stack",
            "Value": ref("BucketKmsKeyArn"),
        },
    }
    for name in definitions.TABLES:
        outputs[table_logical_id(name) + "Arn"] = {
            "Description": f"ARN of the {name} table",
            "Value": getatt(table_logical_id(name), "Arn"),
        }
    return {
        "AWSTemplateFormatVersion": "2010-09-09",
        "Description": "gpufleet data: DynamoDB tables and the S3 bucket of the control plane",
        "Parameters": {
            "TablePrefix": STORAGE_PARAMETERS["TablePrefix"],
            "Bucket": STORAGE_PARAMETERS["Bucket"],
            "BucketEncryption": {
                "Type": "String",
                "Default": "AES256",
                "AllowedValues": ["AES256", "aws:kms"],
                "Description": "Server-side encryption of the bucket.",
            },
            "BucketKmsKeyArn": STORAGE_PARAMETERS["BucketKmsKeyArn"],
            "BucketVersioning": {
                "Type": "String",
                "Default": "Suspended",
                "AllowedValues": ["Enabled", "Suspended"],
                "Description": "Object versioning of the bucket (Enabled keeps overwritten "
                "model files recoverable).",
            },
            "DeletionProtection": {
                "Type": "String",
                "Default": "true",
                "AllowedValues": ["true", "false"],
                "Description": "DeletionProtectionEnabled of every table.",
            },
        },
        "Conditions": {
            **STORAGE_CONDITIONS,
            "UsesKms": {"Fn::Equals": [ref("BucketEncryption"), "aws:kms"]},
            "UsesCustomKmsKey": {
                "Fn::And": [{"Condition": "UsesKms"}, {"Condition": "HasBucketKmsKey"}]
            },
        },
        "Resources": resources,
        "Outputs": outputs,
    }
