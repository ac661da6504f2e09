"""Self-hosted storage: create the tables and the bucket on DynamoDB-/S3-compatible endpoints.

The counterpart of iac/data.yaml for stores that CloudFormation cannot reach (DynamoDB Local,
ScyllaDB Alternator, MinIO, Ceph RGW, …). Settings come from the control plane's own
environment, so the same variables then run ``python -m control_plane serve``:

    GPUFLEET_DYNAMODB_ENDPOINT_URL=http://ddb.internal:8000 \\
    GPUFLEET_S3_ENDPOINT_URL=https://minio.internal:9000 \\
    GPUFLEET_TABLE_PREFIX=gpufleet GPUFLEET_BUCKET=gpufleet \\
    python scripts/init_storage.py

Existing tables and bucket are kept. The lifecycle rules of ``BUCKET_LIFECYCLE_DAYS`` are
applied where the store supports them (a warning otherwise).
"""

from __future__ import annotations

import sys
from typing import Any

from botocore.exceptions import ClientError

from control_plane.settings import Settings, load_settings
from control_plane.storage import definitions
from control_plane.storage.aws import make_clients


def lifecycle_configuration() -> dict[str, Any]:
    """``PutBucketLifecycleConfiguration`` rules equal to those of iac/data.yaml."""
    rules: list[dict[str, Any]] = [
        {
            "ID": f"expire-{prefix.strip('/')}",
            "Status": "Enabled",
            "Filter": {"Prefix": prefix},
            "Expiration": {"Days": days},
        }
        for prefix, days in definitions.BUCKET_LIFECYCLE_DAYS.items()
    ]
    rules.append(
        {
            "ID": "abort-incomplete-multipart",
            "Status": "Enabled",
            "Filter": {"Prefix": ""},
            "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 2},
        }
    )
    return {"Rules": rules}


def init_storage(settings: Settings) -> list[str]:
    """Create what is missing; returns warnings (features the store lacks)."""
    dynamodb, s3 = make_clients(settings)
    definitions.create_all(
        dynamodb, s3, settings.table_prefix, settings.bucket, settings.aws_region
    )
    warnings: list[str] = []
    try:
        s3.put_bucket_lifecycle_configuration(
            Bucket=settings.bucket, LifecycleConfiguration=lifecycle_configuration()
        )
    except ClientError as exc:
        warnings.append(
            f"bucket lifecycle not applied ({exc}); expire payloads/ and results/ "
            "with the store's own tools"
        )
    return warnings


def main() -> int:
    settings = load_settings()
    for warning in init_storage(settings):
        print(f"warning: {warning}", file=sys.stderr)
    print(f"tables {settings.table_prefix}-* and bucket {settings.bucket} ready")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
