"""iac/data.yaml deployed into moto's CloudFormation (over HTTP) by the deploy script, then the
control plane runs on exactly the tables and bucket that stack created.

moto's CloudFormation ignores the bucket policy (it warns), TTL, PITR, lifecycle and public
access block settings; test_templates.py checks those in the template itself.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import boto3
import httpx
import pytest

from control_plane.settings import Settings
from control_plane.storage import definitions
from scripts.create_admin_key import create_admin_key, settings_from_stack
from scripts.deploy_control_plane import Deployment, deploy

pytestmark = pytest.mark.filterwarnings(
    # moto has no AWS::S3::BucketPolicy; it warns (from its server thread) and skips it.
    r"ignore:Tried to parse AWS.+BucketPolicy:UserWarning"
)


@pytest.fixture(scope="module")
def stack(moto_endpoint: str) -> Iterator[tuple[str, Deployment]]:
    """One data stack for the module: (stack name, deployment)."""
    name = f"s{uuid.uuid4().hex[:8]}"
    session = boto3.session.Session(region_name="us-east-1")
    result = deploy(
        session,
        stack=name,
        bucket=f"{name}-bucket",
        table_prefix=f"{name}p",
        code_zip=None,
        compute_params={},
        data_params={"BucketEncryption": "AES256"},
        endpoint_url=moto_endpoint,
        data_only=True,
        delay_s=1,
    )
    yield name, result


def _clients(endpoint: str) -> tuple[Any, Any, Any]:
    session = boto3.session.Session(region_name="us-east-1")
    return (
        session.client("cloudformation", endpoint_url=endpoint),
        session.client("dynamodb", endpoint_url=endpoint),
        session.client("s3", endpoint_url=endpoint),
    )


def test_stack_created_with_outputs(stack: tuple[str, Deployment], moto_endpoint: str) -> None:
    name, result = stack
    cfn, _, _ = _clients(moto_endpoint)
    status = cfn.describe_stacks(StackName=f"{name}-data")["Stacks"][0]["StackStatus"]
    assert status == "CREATE_COMPLETE"
    assert result.data_outputs["TablePrefix"] == f"{name}p"
    assert result.data_outputs["Bucket"] == f"{name}-bucket"
    assert result.data_outputs["AwsRegion"] == "us-east-1"
    assert result.compute_outputs == {}


def test_tables_match_definitions(stack: tuple[str, Deployment], moto_endpoint: str) -> None:
    name, _ = stack
    _, dynamodb, _ = _clients(moto_endpoint)
    listed = {
        n for page in dynamodb.get_paginator("list_tables").paginate() for n in page["TableNames"]
    }
    for table in definitions.TABLES:
        want = definitions.create_table_kwargs(table, f"{name}p")
        assert want["TableName"] in listed
        got = dynamodb.describe_table(TableName=want["TableName"])["Table"]
        assert got["KeySchema"] == want["KeySchema"]
        assert (
            sorted(got["AttributeDefinitions"], key=lambda a: a["AttributeName"])
            == (want["AttributeDefinitions"])
        )
        assert got["BillingModeSummary"]["BillingMode"] == "PAY_PER_REQUEST"
        got_gsis = {
            g["IndexName"]: (g["KeySchema"], g["Projection"])
            for g in got.get("GlobalSecondaryIndexes", [])
        }
        want_gsis = {
            g["IndexName"]: (g["KeySchema"], g["Projection"])
            for g in want.get("GlobalSecondaryIndexes", [])
        }
        assert got_gsis == want_gsis


def test_bucket_created_encrypted(stack: tuple[str, Deployment], moto_endpoint: str) -> None:
    _, result = stack
    _, _, s3 = _clients(moto_endpoint)
    enc = s3.get_bucket_encryption(Bucket=result.data_outputs["Bucket"])
    rule = enc["ServerSideEncryptionConfiguration"]["Rules"][0]
    assert rule["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"] == "AES256"


def test_redeploy_is_a_no_op_update(stack: tuple[str, Deployment], moto_endpoint: str) -> None:
    name, first = stack
    again = deploy(
        boto3.session.Session(region_name="us-east-1"),
        stack=name,
        bucket=first.data_outputs["Bucket"],
        table_prefix=first.data_outputs["TablePrefix"],
        code_zip=None,
        compute_params={},
        data_params={"BucketEncryption": "AES256"},
        endpoint_url=moto_endpoint,
        data_only=True,
        delay_s=1,
    )
    assert again.data_outputs == first.data_outputs


def _stack_settings(name: str, endpoint: str) -> Settings:
    return settings_from_stack(
        name,
        "us-east-1",
        endpoint,
        dynamodb_endpoint_url=endpoint,
        s3_endpoint_url=endpoint,
        jwt_secret="stack-test-signing-key-0123456789abcdef0123",
    )


async def test_control_plane_serves_on_the_stacks_tables(
    stack: tuple[str, Deployment], moto_endpoint: str
) -> None:
    """Bootstrap key → token → job submit, on the tables and bucket the stack made."""
    from control_plane.app import create_app

    name, result = stack
    settings = _stack_settings(name, moto_endpoint)
    assert settings.table_prefix == result.data_outputs["TablePrefix"]
    assert settings.bucket == result.data_outputs["Bucket"]
    created = create_admin_key(settings, tenant="ops")
    assert created.role == "admin" and created.api_key.startswith("gf_")

    app = create_app(settings)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://cp.test") as client:
        health = await client.get("/v1/health")
        assert health.status_code == 200, health.text
        assert health.json()["status"] == "ok"
        token = await client.post("/v1/auth/token", json={"api_key": created.api_key})
        assert token.status_code == 200, token.text
        headers = {"Authorization": f"Bearer {token.json()['access_token']}"}
        job = {
            "model": "nope",
            "inputs": [{"name": "X", "datatype": "FP32", "shape": [1], "data": [1.0]}],
        }
        r = await client.post("/v1/jobs", json=job, headers=headers)
        assert r.status_code == 404, r.text
        assert r.json()["error"]["code"] == "model_not_found"
        # the key landed in the stack's auth table, not anywhere else
        _, dynamodb, _ = _clients(moto_endpoint)
        count = dynamodb.scan(TableName=f"{settings.table_prefix}-auth", Select="COUNT")["Count"]
        assert count >= 1
