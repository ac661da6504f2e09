"""Every store of one control-plane process, built once from the settings.

Two implementations of the same protocols (storage/protocols*.py, services/webhook_records.py):

- ``dynamo_stores(settings)``: DynamoDB tables + an S3 bucket (production: any number of
  replicas, Lambda, several hosts).
- ``sqlite_stores(settings, data_dir)``: the embedded store, one SQLite file plus a local blob
  directory under ``data_dir`` (one host, development). Its blob URLs are served by the
  control plane itself (``/v1/blobs/…``), so ``blob_base_url`` must be set once the address
  is known.

Services see only the protocols; nothing above this module knows which store is behind them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from control_plane.services.webhook_records import SecretStore, WebhookStore
from control_plane.settings import Settings
from control_plane.storage.protocols import (
    BlobStore,
    DeploymentStore,
    JobServiceStores,
    ModelStore,
)
from control_plane.storage.protocols_auth import AuthStore, NonceStore, RunnerStore
from control_plane.storage.protocols_capacity import CapacityStore
from control_plane.storage.protocols_keys import SigningKeyStore
from control_plane.storage.protocols_limits import LimitsStore
from control_plane.storage.protocols_rollups import RollupStore
from control_plane.storage.protocols_streams import StreamStore


def _nothing() -> None:
    return None


@dataclass
class Stores:
    """The stores behind every service (see the module docstring)."""

    kind: str  # "dynamodb" | "sqlite"
    jobs: JobServiceStores
    models: ModelStore
    deployments: DeploymentStore
    blobs: BlobStore
    auth: AuthStore
    runners: RunnerStore
    nonces: NonceStore
    webhooks: WebhookStore
    webhook_secrets: SecretStore
    close: Callable[[], None] = _nothing
    rollups: RollupStore | None = None  # the console's charts (None: no charts)
    capacity: CapacityStore | None = None  # pools and capacity decisions (services/capacity)
    streams: StreamStore | None = None  # streamed partial outputs (services/streams.py)
    # asymmetric signing keys (services/signing_keys.py; None: kept in memory, one replica)
    signing_keys: SigningKeyStore | None = None
    limits: LimitsStore | None = None  # tenant quotas, key priorities, tenant load counters
    extra: dict[str, Any] = field(default_factory=dict)

    def set_public_url(self, url: str) -> None:
        """Tell a self-served blob store the address its URLs must name."""
        if hasattr(self.blobs, "base_url"):
            self.blobs.base_url = url.rstrip("/")


def dynamo_stores(settings: Settings) -> Stores:
    """The DynamoDB + S3 adapters on the tables and bucket named in ``settings``."""
    from control_plane.storage.aws import make_clients
    from control_plane.storage.blobs import S3BlobStore
    from control_plane.storage.dynamo_auth import DynamoAuthStore
    from control_plane.storage.dynamo_capacity import DynamoCapacityStore
    from control_plane.storage.dynamo_idempotency import DynamoIdempotencyStore
    from control_plane.storage.dynamo_jobs import DynamoJobRecordStore
    from control_plane.storage.dynamo_keys import DynamoSigningKeyStore
    from control_plane.storage.dynamo_limits import DynamoLimitsStore
    from control_plane.storage.dynamo_models import DynamoModelStore
    from control_plane.storage.dynamo_queue import DynamoQueueStore
    from control_plane.storage.dynamo_rollups import DynamoRollupStore
    from control_plane.storage.dynamo_runners import DynamoNonceStore, DynamoRunnerStore
    from control_plane.storage.dynamo_streams import DynamoStreamStore
    from control_plane.storage.dynamo_webhooks import (
        DynamoWebhookSecretStore,
        DynamoWebhookStore,
    )

    db, s3 = make_clients(settings)
    t = settings.table
    models = DynamoModelStore(db, t("models"))
    return Stores(
        kind="dynamodb",
        jobs=JobServiceStores(
            jobs=DynamoJobRecordStore(db, t("jobs")),
            queue=DynamoQueueStore(db, t("queue"), t("leases"), t("models")),
            idempotency=DynamoIdempotencyStore(db, t("idempotency")),
        ),
        models=models,
        deployments=models,
        blobs=S3BlobStore(s3, settings.bucket),
        auth=DynamoAuthStore(db, t("auth")),
        runners=DynamoRunnerStore(db, t("runners")),
        nonces=DynamoNonceStore(db, t("nonces")),
        webhooks=DynamoWebhookStore(db, t("webhooks")),
        webhook_secrets=DynamoWebhookSecretStore(db, t("auth")),
        rollups=DynamoRollupStore(db, t("rollups")),
        capacity=DynamoCapacityStore(db, t("capacity")),
        streams=DynamoStreamStore(db, t("streams"), t("jobs")),
        signing_keys=DynamoSigningKeyStore(db, t("auth")),
        limits=DynamoLimitsStore(db, t("capacity")),
        extra={"dynamodb": db, "s3": s3},
    )


def build_stores(settings: Settings) -> Stores:
    """The embedded SQLite store when ``settings.embedded``, else DynamoDB + S3."""
    if settings.embedded:
        from control_plane.storage.embedded_store import open_embedded_store

        return open_embedded_store(settings)
    return dynamo_stores(settings)
