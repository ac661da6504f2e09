"""Table and bucket definitions: the single source for the embedded mode, the tests and iac/.

Each table is described once as the keyword arguments of DynamoDB ``CreateTable`` (minus the
name prefix). ``create_all`` creates them on any DynamoDB/S3-compatible endpoint (moto in the
embedded mode and the tests); ``iac/`` renders the same definitions into CloudFormation.

Layout (every state change is a conditional write on these):
- ``jobs``        PK ``id``. One item per job: request, status, lease token, result.
                  GSI ``by_tenant`` (``tenant``, ``created_key``) for listing a tenant's jobs;
                  KEYS_ONLY GSI ``by_time`` (``list_shard`` = ``all#<n>``, ``created_key``)
                  for every tenant's jobs newest first.
- ``queue``       PK ``shard`` = ``<model>#<n>``, SK ``sk`` = ``<999-priority>#<created_ms>#<id>``.
                  Only claimable jobs live here, so a lease reads a few small partitions
                  whatever the size of ``jobs``.
- ``leases``      PK ``shard`` = ``lease#<n>``, SK ``sk`` = ``<expires_ms>#<id>``: running jobs
                  ordered by lease expiry, so the expiry sweep reads only what has expired.
- ``idempotency`` PK ``key`` = ``<tenant>#<Idempotency-Key>``: body hash and job id, 24 h.
- ``models``      PK ``name``, SK ``sk`` (``v#<version>``, ``deployment``): model versions,
                  their parsed config and files; deployment specs.
- ``auth``        PK ``pk``: API keys (hash only), refresh tokens and families, join tokens,
                  the generated signing key.
- ``runners``     PK ``id``: registration, secret, last heartbeat, runtime config.
- ``nonces``      PK ``pk`` = ``<runner>#<nonce>``: replay cache of signed runner calls (TTL).
- ``webhooks``    PK ``job_id``, SK ``sk``: webhook delivery log.
- ``rollups``     PK ``series``, SK ``minute``: the console's per-minute counters and gauges
                  (jobs by status, queue depth and wait, GPU readings), TTL a week.
- ``capacity``    PK ``pk``, SK ``sk``: pools, the fleet's capacity decision, the decision
                  log per pool (TTL) (storage/dynamo_capacity.py); tenant quotas, API-key
                  priority limits and per-tenant load counters (storage/dynamo_limits.py).
- ``streams``     PK ``job_id``, SK ``sk`` = ``<attempt>#<seq>``: streamed partial outputs of
                  durable jobs (TTL) (storage/dynamo_streams.py).
"""

from __future__ import annotations

import copy
from typing import Any

TTL_ATTRIBUTE = "expires_at"


def _table(
    hash_key: str,
    range_key: str | None = None,
    *,
    gsis: list[dict[str, Any]] | None = None,
    extra_attributes: list[str] | None = None,
    ttl: bool = False,
) -> dict[str, Any]:
    key_schema = [{"AttributeName": hash_key, "KeyType": "HASH"}]
    attrs = {hash_key}
    if range_key:
        key_schema.append({"AttributeName": range_key, "KeyType": "RANGE"})
        attrs.add(range_key)
    for name in extra_attributes or []:
        attrs.add(name)
    spec: dict[str, Any] = {
        "KeySchema": key_schema,
        "AttributeDefinitions": [{"AttributeName": a, "AttributeType": "S"} for a in sorted(attrs)],
        "BillingMode": "PAY_PER_REQUEST",
    }
    if gsis:
        spec["GlobalSecondaryIndexes"] = gsis
    spec["_ttl"] = ttl
    return spec


TABLES: dict[str, dict[str, Any]] = {
    "jobs": _table(
        "id",
        gsis=[
            {
                "IndexName": "by_tenant",
                "KeySchema": [
                    {"AttributeName": "tenant", "KeyType": "HASH"},
                    {"AttributeName": "created_key", "KeyType": "RANGE"},
                ],
                "Projection": {"ProjectionType": "ALL"},
            },
            {
                "IndexName": "by_time",
                "KeySchema": [
                    {"AttributeName": "list_shard", "KeyType": "HASH"},
                    {"AttributeName": "created_key", "KeyType": "RANGE"},
                ],
                "Projection": {"ProjectionType": "KEYS_ONLY"},
            },
        ],
        extra_attributes=["tenant", "created_key", "list_shard"],
        ttl=True,
    ),
    "queue": _table("shard", "sk"),
    "leases": _table("shard", "sk"),
    "idempotency": _table("key", ttl=True),
    "models": _table("name", "sk"),
    "auth": _table("pk", ttl=True),
    "runners": _table("id"),
    "nonces": _table("pk", ttl=True),
    "webhooks": _table("job_id", "sk", ttl=True),
    "rollups": _table("series", "minute", ttl=True),
    "capacity": _table("pk", "sk", ttl=True),
    "streams": _table("job_id", "sk", ttl=True),
}

# Object key prefixes in the bucket.
MODELS_PREFIX = "models/"  # models/<name>/<version>/<path>
PAYLOADS_PREFIX = "payloads/"  # payloads/<ref>: large input tensors (lifecycle: 7 days)
RESULTS_PREFIX = "results/"  # results/<job_id>/outputs.json (lifecycle: 30 days)

BUCKET_LIFECYCLE_DAYS = {PAYLOADS_PREFIX: 7, RESULTS_PREFIX: 30}


def create_table_kwargs(name: str, table_prefix: str) -> dict[str, Any]:
    """``CreateTable`` keyword arguments for one logical table."""
    spec = copy.deepcopy(TABLES[name])
    spec.pop("_ttl", None)
    spec["TableName"] = f"{table_prefix}-{name}"
    return spec


def has_ttl(name: str) -> bool:
    return bool(TABLES[name].get("_ttl"))


def _table_exists(dynamodb: Any, table: str) -> bool:
    # describe_table, not list_tables: list_tables pages at 100 names per call.
    try:
        dynamodb.describe_table(TableName=table)
    except dynamodb.exceptions.ResourceNotFoundException:
        return False
    return True


def _bucket_exists(s3: Any, bucket: str) -> bool:
    try:
        s3.head_bucket(Bucket=bucket)
    except s3.exceptions.ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchBucket", "NotFound"):
            return False
        raise
    return True


def create_all(dynamodb: Any, s3: Any, table_prefix: str, bucket: str, region: str) -> None:
    """Create every table (with TTL where defined) and the bucket; existing ones are kept."""
    for name in TABLES:
        kwargs = create_table_kwargs(name, table_prefix)
        if _table_exists(dynamodb, kwargs["TableName"]):
            continue
        try:
            dynamodb.create_table(**kwargs)
        except dynamodb.exceptions.ResourceInUseException:  # created concurrently
            continue
        dynamodb.get_waiter("table_exists").wait(TableName=kwargs["TableName"])
        if has_ttl(name):
            dynamodb.update_time_to_live(
                TableName=kwargs["TableName"],
                TimeToLiveSpecification={"Enabled": True, "AttributeName": TTL_ATTRIBUTE},
            )
    if not _bucket_exists(s3, bucket):
        if region == "us-east-1":
            s3.create_bucket(Bucket=bucket)
        else:
            s3.create_bucket(
                Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": region}
            )
