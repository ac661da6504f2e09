"""The committed templates: up to date with the code, cfn-lint clean, and saying what we mean."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from cfnlint.api import lint_file

from control_plane.settings import Settings
from control_plane.storage import definitions
from iac import generate
from iac.common import (
    DYNAMODB_ACTIONS,
    LAMBDA_DEFAULTS,
    NOT_PARAMETERS,
    S3_BUCKET_ACTIONS,
    S3_OBJECT_ACTIONS,
    env_name,
    param_name,
)
from iac.data_stack import table_logical_id

IAC = Path(generate.__file__).resolve().parent


def load(name: str) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((IAC / name).read_text())
    return data


def test_committed_templates_equal_generated() -> None:
    assert generate.stale() == [], "run `python -m iac.generate` and commit iac/*.yaml"


def test_stale_detects_a_hand_edit(tmp_path: Path) -> None:
    generate.write(tmp_path)
    assert generate.stale(tmp_path) == []
    edited = tmp_path / "data.yaml"
    edited.write_text(edited.read_text().replace("PAY_PER_REQUEST", "PROVISIONED", 1))
    assert generate.stale(tmp_path) == ["data.yaml"]


@pytest.mark.parametrize("name", sorted(generate.TEMPLATES))
def test_cfn_lint_clean(name: str) -> None:
    matches = lint_file(IAC / name)
    assert [str(m) for m in matches] == []


# ---------------------------------------------------------------- data stack
def test_every_table_is_defined_like_the_code() -> None:
    resources = load("data.yaml")["Resources"]
    tables = {k: v for k, v in resources.items() if v["Type"] == "AWS::DynamoDB::Table"}
    assert set(tables) == {table_logical_id(n) for n in definitions.TABLES}
    for name in definitions.TABLES:
        res = tables[table_logical_id(name)]
        props = res["Properties"]
        want = definitions.create_table_kwargs(name, "p")
        assert props["TableName"] == {"Fn::Sub": f"${{TablePrefix}}-{name}"}
        assert props["KeySchema"] == want["KeySchema"]
        assert props["AttributeDefinitions"] == want["AttributeDefinitions"]
        assert props.get("GlobalSecondaryIndexes") == want.get("GlobalSecondaryIndexes")
        assert props["BillingMode"] == "PAY_PER_REQUEST"
        assert props["PointInTimeRecoverySpecification"] == {"PointInTimeRecoveryEnabled": True}
        assert props["SSESpecification"] == {"SSEEnabled": True}
        ttl = props.get("TimeToLiveSpecification")
        if definitions.has_ttl(name):
            assert ttl == {"AttributeName": definitions.TTL_ATTRIBUTE, "Enabled": True}
        else:
            assert ttl is None
        assert res["DeletionPolicy"] == "Retain"


def test_bucket_is_private_encrypted_and_expires_payloads_and_results() -> None:
    resources = load("data.yaml")["Resources"]
    props = resources["DataBucket"]["Properties"]
    assert props["BucketName"] == {"Ref": "Bucket"}
    assert set(props["PublicAccessBlockConfiguration"].values()) == {True}
    assert len(props["PublicAccessBlockConfiguration"]) == 4
    sse = props["BucketEncryption"]["ServerSideEncryptionConfiguration"][0]
    assert sse["ServerSideEncryptionByDefault"]["SSEAlgorithm"] == {"Ref": "BucketEncryption"}
    params = load("data.yaml")["Parameters"]
    assert params["BucketEncryption"]["AllowedValues"] == ["AES256", "aws:kms"]
    expiring = {
        r["Prefix"]: r["ExpirationInDays"]
        for r in props["LifecycleConfiguration"]["Rules"]
        if "ExpirationInDays" in r
    }
    assert expiring == definitions.BUCKET_LIFECYCLE_DAYS
    assert definitions.MODELS_PREFIX not in expiring
    statement = resources["DataBucketPolicy"]["Properties"]["PolicyDocument"]["Statement"][0]
    assert statement["Effect"] == "Deny"
    assert statement["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}


# ---------------------------------------------------------------- compute stacks
def test_lambda_is_the_mangum_handler_behind_an_http_api() -> None:
    resources = load("compute.yaml")["Resources"]
    fn = resources["Function"]["Properties"]
    assert fn["Handler"] == "control_plane.lambda_handler.handler"
    runtimes = load("compute.yaml")["Parameters"]["Runtime"]["AllowedValues"]
    assert set(runtimes) <= {"python3.11", "python3.12"}
    assert fn["Code"] == {"S3Bucket": {"Ref": "CodeBucket"}, "S3Key": {"Ref": "CodeKey"}}
    integration = resources["HttpApiIntegration"]["Properties"]
    assert integration["IntegrationType"] == "AWS_PROXY"
    assert integration["PayloadFormatVersion"] == "2.0"
    assert resources["HttpApiRoute"]["Properties"]["RouteKey"] == "$default"
    assert resources["HttpApiPermission"]["Properties"]["Principal"] == "apigateway.amazonaws.com"
    assert resources["SweepSchedule"]["Properties"]["Targets"][0]["Input"] == (
        '{"gpufleet": "sweep"}'
    )


def _storage_statements(template: str, role: str) -> list[dict[str, Any]]:
    role_props = load(template)["Resources"][role]["Properties"]
    policy = next(p for p in role_props["Policies"] if p["PolicyName"] == "gpufleet-storage")
    out = []
    for st in policy["PolicyDocument"]["Statement"]:
        out.append(st["Fn::If"][1] if "Fn::If" in st else st)
    return out


@pytest.mark.parametrize(
    ("template", "role"), [("compute.yaml", "FunctionRole"), ("ecs.yaml", "TaskRole")]
)
def test_role_reaches_only_these_tables_and_this_bucket(template: str, role: str) -> None:
    statements = _storage_statements(template, role)
    by_sid = {st["Sid"]: st for st in statements}
    tables = by_sid["Tables"]
    assert tables["Action"] == DYNAMODB_ACTIONS
    assert not {"dynamodb:CreateTable", "dynamodb:DeleteTable", "dynamodb:UpdateTable"} & set(
        tables["Action"]
    )
    resources = [r["Fn::Sub"] for r in tables["Resource"]]
    names = {r.split("${TablePrefix}-")[1].split("/")[0] for r in resources}
    assert names == set(definitions.TABLES)
    indexed = {n for n, spec in definitions.TABLES.items() if spec.get("GlobalSecondaryIndexes")}
    assert {r.split("${TablePrefix}-")[1].split("/")[0] for r in resources if "/index/" in r} == (
        indexed
    )
    assert by_sid["BucketObjects"]["Action"] == S3_OBJECT_ACTIONS
    assert by_sid["BucketObjects"]["Resource"] == {
        "Fn::Sub": "arn:${AWS::Partition}:s3:::${Bucket}/*"
    }
    assert by_sid["Bucket"]["Action"] == S3_BUCKET_ACTIONS
    for st in statements:
        actions = st["Action"] if isinstance(st["Action"], list) else [st["Action"]]
        assert all("*" not in a for a in actions), st
        assert st["Resource"] != "*"


def _function_env() -> dict[str, Any]:
    env: dict[str, Any] = load("compute.yaml")["Resources"]["Function"]["Properties"][
        "Environment"
    ]["Variables"]
    return env


def test_every_setting_is_a_parameter_and_an_environment_variable() -> None:
    params = load("compute.yaml")["Parameters"]
    env = _function_env()
    for field in Settings.model_fields:
        if field in NOT_PARAMETERS:
            continue
        assert env[env_name(field)] == {"Ref": param_name(field)}, field
        assert param_name(field) in params, field
    assert env["GPUFLEET_AWS_REGION"] == {"Ref": "AWS::Region"}
    assert "GPUFLEET_JWT_SECRET" in env
    assert params["JwtSecret"]["NoEcho"] is True
    assert set(NOT_PARAMETERS) <= set(Settings.model_fields), "stale NOT_PARAMETERS entry"


def test_parameter_defaults_load_as_valid_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """The function's environment, with every parameter at its default, is valid Settings."""
    params = load("compute.yaml")["Parameters"]
    for key, value in _function_env().items():
        if isinstance(value, dict) and "Ref" in value and value["Ref"] in params:
            default = params[value["Ref"]].get("Default", "bucket-name")
            monkeypatch.setenv(key, str(default))
    monkeypatch.setenv("GPUFLEET_AWS_REGION", "eu-west-1")
    settings = Settings()
    assert settings.table_prefix == "gpufleet"
    for field, want in LAMBDA_DEFAULTS.items():
        assert getattr(settings, field) == want
    assert settings.max_wait_s < 30 and settings.infer_wait_s < 30


def test_ecs_runs_the_serve_entry_point() -> None:
    resources = load("ecs.yaml")["Resources"]
    container = resources["TaskDefinition"]["Properties"]["ContainerDefinitions"][0]
    assert container["Command"][:4] == ["python", "-m", "control_plane", "serve"]
    names = {e["Name"] for e in container["Environment"] if "Name" in e}
    for field in Settings.model_fields:
        if field not in NOT_PARAMETERS:
            assert env_name(field) in names
