"""scripts/init_storage.py on an S3-/DynamoDB-compatible endpoint (moto over HTTP)."""

from __future__ import annotations

from control_plane.settings import Settings
from control_plane.storage import definitions
from control_plane.storage.aws import make_clients
from scripts.init_storage import init_storage


def test_creates_tables_bucket_and_lifecycle_idempotently(settings: Settings) -> None:
    assert init_storage(settings) == []
    assert init_storage(settings) == []  # a second run keeps everything
    dynamodb, s3 = make_clients(settings)
    names = {
        n for page in dynamodb.get_paginator("list_tables").paginate() for n in page["TableNames"]
    }
    assert {f"{settings.table_prefix}-{t}" for t in definitions.TABLES} <= names
    rules = s3.get_bucket_lifecycle_configuration(Bucket=settings.bucket)["Rules"]
    expiring = {r["Filter"]["Prefix"]: r["Expiration"]["Days"] for r in rules if "Expiration" in r}
    assert expiring == definitions.BUCKET_LIFECYCLE_DAYS
    ttl = dynamodb.describe_time_to_live(TableName=settings.table("jobs"))
    assert ttl["TimeToLiveDescription"]["AttributeName"] == definitions.TTL_ATTRIBUTE
