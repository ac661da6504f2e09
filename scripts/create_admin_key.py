"""Bootstrap: create the first admin API key directly in a deployment's auth table.

Runs with the operator's AWS credentials (no API call, no token needed):

    python scripts/create_admin_key.py --stack NAME [--region R] [--tenant admin] [--name bootstrap]

reads the table prefix and bucket from the data stack's outputs (``NAME-data``), or takes the
control plane's own settings from the environment (``GPUFLEET_TABLE_PREFIX``, …) when no
``--stack`` is given (self-hosted stores: also ``GPUFLEET_DYNAMODB_ENDPOINT_URL``). Prints the
key once; only its hash is stored.
"""

from __future__ import annotations

import argparse
from typing import Any

from gpufleet.wire import ApiKeyCreated

from control_plane.composition import build_auth_service
from control_plane.settings import Settings, load_settings
from control_plane.storage.aws import make_clients
from control_plane.storage.dynamo_auth import DynamoAuthStore


def create_admin_key(
    settings: Settings, *, tenant: str = "admin", name: str = "bootstrap", role: str = "admin"
) -> ApiKeyCreated:
    """A new API key (admin by default) stored through the control plane's own auth store."""
    dynamodb, _ = make_clients(settings)
    store = DynamoAuthStore(dynamodb, settings.table("auth"))
    auth = build_auth_service(settings, store, keys=None)  # the server's composition root
    return auth.issue_api_key(tenant, role, name)


def settings_from_stack(
    stack: str, region: str | None, endpoint_url: str | None = None, **overrides: Any
) -> Settings:
    """Settings for the tables and bucket of ``<stack>-data`` (its outputs)."""
    import boto3

    cfn = boto3.client("cloudformation", region_name=region, endpoint_url=endpoint_url)
    stacks = cfn.describe_stacks(StackName=f"{stack}-data")["Stacks"]
    outputs = {o["OutputKey"]: o["OutputValue"] for o in stacks[0].get("Outputs", [])}
    return load_settings(
        table_prefix=outputs["TablePrefix"],
        bucket=outputs["Bucket"],
        aws_region=outputs["AwsRegion"],
        **overrides,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Create the first admin API key.")
    parser.add_argument("--stack", help="stack name given to deploy_control_plane.py")
    parser.add_argument("--region", default=None)
    parser.add_argument("--endpoint-url", default=None, help="CloudFormation endpoint (tests)")
    parser.add_argument("--tenant", default="admin")
    parser.add_argument("--name", default="bootstrap")
    args = parser.parse_args(argv)
    if args.stack:
        settings = settings_from_stack(args.stack, args.region, args.endpoint_url)
    else:
        settings = load_settings()
    created = create_admin_key(settings, tenant=args.tenant, name=args.name)
    print(f"admin key id: {created.id}")
    print(f"api key (shown once): {created.api_key}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
