"""Control-plane settings: environment (``GPUFLEET_``) > YAML file > defaults.

Built once in ``main`` (or by the embedded launcher / tests) and passed down; nothing reads the
environment at import time.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)


class TenantRegions(BaseModel):
    """Region defaults of one tenant (``Settings.tenant_regions``)."""

    model_config = ConfigDict(extra="forbid")

    default_region: str | None = Field(default=None, max_length=64)
    regions_allowed: list[str] = Field(default_factory=list, max_length=64)

    @model_validator(mode="after")
    def _default_inside(self) -> TenantRegions:
        if self.regions_allowed and self.default_region not in (None, *self.regions_allowed):
            raise ValueError("default_region must be one of regions_allowed")
        return self


class Settings(BaseSettings):
    """Settings of one control-plane process."""

    model_config = SettingsConfigDict(env_prefix="GPUFLEET_", extra="forbid")

    # storage
    aws_region: str = Field(default="us-east-1", description="Region of the tables and bucket.")
    dynamodb_endpoint_url: str | None = Field(
        default=None, description="DynamoDB-compatible endpoint; None = AWS."
    )
    s3_endpoint_url: str | None = Field(
        default=None, description="S3-compatible endpoint; None = AWS."
    )
    table_prefix: str = Field(default="gpufleet", description="Prefix of every table name.")
    bucket: str = Field(default="gpufleet", description="Bucket for models, payloads, results.")
    queue_shards: int = Field(
        default=4, ge=1, le=256, description="Shards per model in the queue table (no hot key)."
    )
    lease_shards: int = Field(
        default=4, ge=1, le=256, description="Shards of the lease-expiry index."
    )

    # auth
    jwt_secret: SecretStr | None = Field(
        default=None,
        description="HS256 signing key. Unset: a key is generated once and kept in the tables, "
        "so every replica shares it.",
    )
    access_token_algorithm: Literal["EdDSA", "ES256", "HS256"] = Field(
        default="EdDSA",
        description="How access tokens are signed: EdDSA or ES256 with the shared key pairs "
        "(kid, GET /v1/auth/jwks, rotated), or HS256 with one shared secret (jwt_secret). "
        "Direct-mode tickets always use a key pair (EdDSA when this is HS256).",
    )
    signing_key_rotate_s: int = Field(
        default=7 * 86400,
        ge=0,
        description="Rotate the signing key pair this long after it was created (0: only on "
        "demand, POST /v1/admin/signing-keys/rotate).",
    )
    signing_key_overlap_s: int = Field(
        default=3600,
        ge=1,
        description="A rotated-out key still verifies (and stays in the JWKS) this long; keep "
        "it above access_token_ttl_s.",
    )
    signing_key_cache_s: float = Field(
        default=30.0,
        gt=0,
        le=3600,
        description="Each replica re-reads the signing keys from the store this often (at "
        "once on an unknown kid).",
    )
    direct_ticket_ttl_s: int = Field(
        default=300, ge=10, le=300, description="Lifetime of a direct-mode ticket (at most 5 min)."
    )
    jwt_issuer: str = Field(default="gpufleet", description="`iss` of access tokens.")
    jwt_audience: str = Field(default="gpufleet", description="`aud` of access tokens.")
    access_token_ttl_s: int = Field(default=900, ge=60, description="Access-token lifetime.")
    api_key_cache_s: int = Field(
        default=60,
        ge=0,
        le=3600,
        description=(
            "An API key used directly as a bearer token is checked against the store at most "
            "this often per replica (a revoked key may work this long); 0: on every request."
        ),
    )
    refresh_token_ttl_s: int = Field(default=30 * 86400, ge=300, description="Refresh lifetime.")
    revocation_check_s: float = Field(
        default=5.0,
        ge=0,
        le=5,
        description="A bearer token's API key is read from the store at most this often per "
        "replica (a revoked key's tokens stop within this time; admin routes read it on every "
        "request); 0: on every request.",
    )
    max_token_lifetime_s: int = Field(
        default=3600,
        ge=60,
        description="Longest lifetime (exp - iat) of a bearer token accepted at verification "
        "(access tokens of this control plane and of the OpenID issuer).",
    )
    oidc_issuer: str = Field(
        default="",
        description="External OpenID Connect issuer (`iss`) whose tokens are accepted as "
        "bearer tokens; empty: none. Needs oidc_audience and oidc_jwks_url.",
    )
    oidc_audience: str = Field(default="", description="`aud` the issuer's tokens must carry.")
    oidc_jwks_url: str = Field(default="", description="JWKS URL of the OpenID issuer.")
    oidc_tenant_claim: str = Field(
        default="tenant", description="Claim of the issuer's tokens naming the tenant."
    )
    oidc_role_claim: str = Field(
        default="role",
        description="Claim (a string or a list, e.g. groups; dots: a path) mapped to the role.",
    )
    oidc_role_map: str = Field(
        default="",
        description="Role claim values to roles: 'value=role,...' (roles: viewer, user, admin); "
        "a value that is a role's name maps to it anyway.",
    )
    oidc_default_role: str = Field(
        default="", description="Role of a token whose role claim maps to none; empty: 401."
    )
    oidc_algorithms: str = Field(
        default="RS256,ES256", description="Accepted JWS algorithms of the issuer (asymmetric)."
    )
    oidc_jwks_cache_s: float = Field(
        default=300.0, gt=0, description="How long the issuer's key set is cached."
    )
    oidc_jwks_refresh_s: float = Field(
        default=30.0,
        ge=0,
        description="Least time between two fetches of the key set for an unknown `kid` (a "
        "rotated key is picked up then).",
    )
    runner_signature_window_s: int = Field(
        default=300, description="Allowed clock skew of runner-signed calls."
    )
    runner_secret_rotation_s: int = Field(
        default=0,
        ge=0,
        description="Rotate each runner's HMAC secret when it is this old: the new one goes "
        "out in a heartbeat answer and replaces the old once the runner signs with it; 0: "
        "on demand only (POST /v1/runners/{id}/rotate-secret). Runners older than this "
        "release refuse the new answer field: upgrade them first.",
    )
    runner_secret_overlap_s: int = Field(
        default=900,
        ge=0,
        description="How long a runner's replaced HMAC secret stays valid after the rotation "
        "is confirmed (calls signed before it, still in flight).",
    )
    auth_failures_per_key: int = Field(
        default=10,
        ge=0,
        description="Failed API-key attempts per key id within auth_failure_window_s before "
        "every attempt with that key id gets 429 (per replica); 0: no limit.",
    )
    auth_failures_per_address: int = Field(
        default=30,
        ge=0,
        description="Failed API-key, refresh-token and join-token attempts per client address "
        "within auth_failure_window_s before that address gets 429 (per replica); 0: no limit.",
    )
    auth_failure_window_s: float = Field(
        default=60.0, gt=0, description="Window of the failed-authentication counts."
    )

    # storage deadlines (docs/failure_modes.md: a stalled store answers 503, never a hang)
    storage_connect_timeout_s: float = Field(
        default=2.0, gt=0, description="Connect timeout of each DynamoDB/S3 call."
    )
    storage_read_timeout_s: float = Field(
        default=5.0,
        gt=0,
        description="Read timeout of each DynamoDB/S3 call; the embedded store's SQLite busy "
        "timeout (how long a write waits for a lock).",
    )
    storage_max_attempts: int = Field(
        default=2, ge=1, le=10, description="Tries of each DynamoDB/S3 call (botocore retries)."
    )
    storage_budget_s: float = Field(
        default=10.0,
        gt=0,
        description="Storage time one API request may spend in total; past it the request "
        "answers 503 `unavailable` with Retry-After.",
    )
    health_timeout_s: float = Field(
        default=2.0,
        gt=0,
        description="How long a health check waits for a storage ping before it reports the "
        "store degraded.",
    )

    # jobs and queue
    lease_duration_s: float = Field(default=60.0, ge=1, description="Lease length before renewal.")
    max_inline_bytes: int = Field(
        default=256 * 1024, description="Larger tensors go through the bucket."
    )
    max_body_bytes: int = Field(default=8 * 1024 * 1024, description="Largest request body (413).")
    max_wait_s: float = Field(default=30.0, description="Upper bound of `wait_s` on GET job.")
    max_lease_wait_s: float = Field(default=20.0, description="Upper bound of lease long polls.")
    poll_interval_s: float = Field(
        default=0.5,
        gt=0,
        description="Storage re-check interval of long polls (job waits, leases). Changes "
        "committed by this replica wake them at once; other replicas' are seen at the next poll.",
    )
    max_queue_depth: int = Field(
        default=100_000, description="Queued jobs per model before submits get 429."
    )
    # tenant quotas (defaults; an admin sets a tenant's own: docs/quotas.md). 0: no limit.
    tenant_max_queued: int = Field(
        default=10_000, ge=0, description="Jobs a tenant may have queued at once (429 over it)."
    )
    tenant_max_running: int = Field(
        default=0, ge=0, description="Jobs a tenant may have running at once (more wait queued)."
    )
    tenant_submit_rate: float = Field(
        default=0.0, ge=0, description="Jobs a tenant may submit per second, per replica (429)."
    )
    tenant_submit_burst: int = Field(
        default=0, ge=0, description="Token bucket size of the submit rate (0: one second's)."
    )
    tenant_weight: float = Field(
        default=1.0, gt=0, description="A tenant's share of a shared model pool, relative."
    )
    queue_read_depth: int = Field(
        default=100,
        ge=10,
        le=100_000,
        description="Queue entries a replica reads ahead per queue shard for its leases: fair "
        "leasing sees the tenants within this window (docs/quotas.md).",
    )
    default_max_priority: int = Field(
        default=100, ge=0, le=100, description="Highest job priority of a key without a limit."
    )
    sweep_interval_s: float = Field(
        default=2.0, gt=0, description="Period of the expiry sweep (lease expiry, queue TTL)."
    )
    rollup_flush_interval_s: float = Field(
        default=10.0,
        gt=0,
        description="How often this replica adds the job counts it saw to the console's "
        "per-minute rollups (and, once a minute, records queue depth and GPU readings).",
    )
    retry_timed_out_jobs: bool = Field(
        default=False,
        description="Requeue a job whose attempt ran past its timeout_s (another attempt, "
        "while attempts are left) instead of ending it FAILED with code `timeout`.",
    )
    runner_offline_after_s: float = Field(
        default=30.0, description="A runner without heartbeat for this long is OFFLINE."
    )
    infer_wait_s: float = Field(default=60.0, description="How long /v2/…/infer waits (504).")
    # streaming outputs (services/streams.py, docs/streaming.md)
    stream_poll_s: float = Field(
        default=0.25,
        gt=0,
        description="Storage re-check interval of a job stream (GET /v1/jobs/{id}/stream): "
        "chunks stored by this replica wake it at once, other replicas' after this long.",
    )
    stream_keepalive_s: float = Field(
        default=15.0, gt=0, description="An SSE comment this often keeps idle streams open."
    )
    stream_timeout_s: float = Field(
        default=600.0,
        gt=0,
        description="Longest generate_stream call (the stream ends with an error event).",
    )
    stream_retention_s: int = Field(
        default=7 * 86_400,
        ge=60,
        description="How long streamed chunks of a durable job are kept (then deleted).",
    )
    presign_ttl_s: int = Field(default=3600, description="Lifetime of presigned URLs.")

    # model uploads (services/models.py)
    model_max_files: int = Field(
        default=1000, ge=1, le=10_000, description="Most files in one model version upload."
    )
    model_max_bytes: int = Field(
        default=100 * 1024**3, ge=1, description="Largest total size of one model version."
    )

    # placement (services/deployments.py)
    placement_interval_s: float = Field(
        default=2.0, gt=0, description="A stored placement older than this is decided again."
    )
    implicit_max_replicas: int = Field(
        default=1,
        ge=0,
        le=1000,
        description=(
            "A pushed model without a deployment gets an implicit one (min 0, this many "
            "replicas at most), so its first job cold-starts it; 0 turns this off (a model "
            "is then served only after PUT /v1/models/{name}/deployment)."
        ),
    )
    scale_up_wait_s: float = Field(
        default=5.0, ge=0, description="Queue wait of a model that adds a replica (while growing)."
    )
    scale_down_idle_s: float = Field(
        default=60.0, ge=0, description="Seconds without queued jobs before a replica goes."
    )
    scale_cooldown_s: float = Field(
        default=10.0, ge=0, description="Least time between two replica changes of a model."
    )

    # regions (services/regions.py, docs/regions.md)
    region_spill_after_s: float = Field(
        default=30.0,
        ge=0,
        le=86_400,
        description="How long a job with a preferred region waits for a runner there before "
        "it may go to the nearest other allowed region (a job's `spill_after_s` overrides).",
    )
    control_plane_region: str | None = Field(
        default=None,
        description="Region this control plane runs in: runners' measured round-trip times "
        "replace the static latency estimates of the pairs (their region, this one).",
    )
    tenant_regions: dict[str, TenantRegions] = Field(
        default_factory=dict,
        description="Per tenant: `default_region` of its jobs and `regions_allowed` (the hard "
        'limit), e.g. {"acme": {"default_region": "eu-west-1", "regions_allowed": '
        '["eu-west-1", "eu-central-1"]}}; a fallback for tenants without region defaults '
        "stored through the admin API (PUT /v1/admin/tenants/{tenant}/regions).",
    )

    # capacity (services/capacity/): pools of hosts started and stopped on demand
    capacity_enabled: bool = Field(
        default=True, description="Run the capacity autoscaler (pools API and decision loop)."
    )
    capacity_interval_s: float = Field(
        default=5.0, gt=0, description="A stored capacity decision older than this is redone."
    )
    capacity_drain_settle_s: float = Field(
        default=15.0,
        ge=0,
        description="A drained host is stopped only after a heartbeat this long after the "
        "drain reports nothing running (covers a lease in flight when the drain was set).",
    )
    capacity_events_keep: int = Field(
        default=200, ge=1, description="Decision-log entries kept per pool (at least)."
    )
    capacity_providers: str = Field(
        default="docker,aws-asg",
        description="Providers pools may use, comma-separated: docker, aws-asg.",
    )
    capacity_docker_host: str | None = Field(
        default=None,
        description="Docker engine of the docker provider (None: DOCKER_HOST / the local socket).",
    )
    capacity_runner_url: str | None = Field(
        default=None,
        description="URL started runners reach the control plane at (None: public_url).",
    )
    capacity_pool_token_uses: int = Field(
        default=1000,
        ge=1,
        le=100_000,
        description="Runners one pool join token (POST /v1/pools/{name}/join-token, the aws-asg "
        "launch template's token) may register.",
    )
    capacity_pool_token_ttl_s: int = Field(
        default=30 * 86_400,
        ge=3600,
        le=365 * 86_400,
        description="Lifetime of a pool join token: replace the one in the hosts' secret before.",
    )
    capacity_aws_endpoint_url: str | None = Field(
        default=None, description="Auto Scaling / EC2 endpoint of the aws-asg provider (tests)."
    )

    allow_mock_runners: bool = Field(
        default=False,
        description="Let runners on the mock backend (made-up answers, no Triton) take jobs and "
        "dispatched requests. Off: they register and heartbeat, and are given no work.",
    )
    # webhooks
    webhooks_allow_loopback: bool = Field(
        default=False, description="Allow loopback webhook targets (tests, single host)."
    )
    webhook_max_attempts: int = Field(
        default=8, ge=1, le=50, description="Delivery attempts per event before giving up."
    )
    webhook_initial_backoff_s: float = Field(
        default=1.0, gt=0, description="Backoff cap after the first failure (doubles per attempt)."
    )
    webhook_max_backoff_s: float = Field(
        default=600.0, gt=0, description="Largest backoff between attempts (full jitter below it)."
    )
    webhook_timeout_s: float = Field(
        default=10.0, gt=0, description="Total time allowed for one delivery attempt."
    )
    webhook_secret_grace_s: float = Field(
        default=86_400.0, ge=0, description="How long a rotated-out signing secret still signs."
    )
    webhook_poll_interval_s: float = Field(
        default=1.0,
        gt=0,
        description="How often each replica's delivery worker looks for due work.",
    )
    webhook_shards: int = Field(
        default=4, ge=1, le=64, description="Shards of the due-delivery index (no hot key)."
    )

    # synchronous inference (services/dispatch.py)
    dispatch_enabled: bool = Field(
        default=True,
        description="Hand synchronous inference to runners connected to this replica "
        "(in memory); off = every infer call is a durable job.",
    )
    dispatch_queue_wait_s: float = Field(
        default=2.0,
        ge=0,
        description="How long a synchronous infer waits for a free runner slot before 429.",
    )
    dispatch_max_waiters: int = Field(
        default=1024, ge=0, description="Most synchronous infer calls waiting for a slot (429)."
    )
    channel_recheck_s: float = Field(
        default=5.0, gt=0, description="How often a runner channel re-checks revocation."
    )
    grpc_port: int | None = Field(
        default=None,
        ge=0,
        le=65535,
        description="Port of the KServe v2 gRPC endpoint (0 = a free port); None = off.",
    )
    grpc_server: Literal["gpufleet", "grpcio"] = Field(
        default="gpufleet",
        description="What serves the KServe gRPC port: gpufleet's own HTTP/2 server on the "
        "event loop (control_plane/api/grpc_h2.py; TLS with ALPN h2 when serving TLS) or "
        "grpcio's aio server.",
    )

    # TLS served by this process (serve --tls-cert/--tls-key); see docs/tls.md
    tls_cert_file: Path | None = Field(
        default=None,
        description="PEM certificate chain served on HTTP and gRPC; None = plain HTTP (TLS "
        "ends at a proxy or load balancer).",
    )
    tls_key_file: Path | None = Field(default=None, description="Private key of tls_cert_file.")
    tls_client_ca_file: Path | None = Field(
        default=None,
        description="CA of client certificates: when set every connection must present one "
        "(mutual TLS, e.g. runners only).",
    )
    tls_reload_interval_s: float = Field(
        default=10.0,
        ge=0,
        description="How often the certificate files are checked for a change (0 = only on "
        "SIGHUP).",
    )
    hsts_max_age_s: int = Field(
        default=31_536_000,
        ge=0,
        description="max-age of the Strict-Transport-Security header sent over TLS (0 = none).",
    )

    # slow clients (serve's HTTP listener; see docs/security.md#slow-clients)
    http_header_timeout_s: float = Field(
        default=10.0,
        gt=0,
        description="A connection must finish sending a request's headers within this many "
        "seconds of opening (or of its previous response); else it is closed.",
    )
    http_body_timeout_s: float = Field(
        default=10.0,
        gt=0,
        description="Longest wait for the next chunk of a request body, and the grace before "
        "http_body_min_rate applies; a slower body gets 408 and the connection is closed.",
    )
    http_body_min_rate: int = Field(
        default=1024,
        ge=0,
        description="Least average body rate (bytes/s) after http_body_timeout_s (0 = none).",
    )
    http_keep_alive_s: int = Field(
        default=5, ge=1, description="Idle keep-alive connections are closed after this."
    )
    http_max_concurrency: int | None = Field(
        default=2048,
        ge=1,
        description="Most connections and requests at once (runner channels included); "
        "more get 503 at once. None = no limit.",
    )

    # /metrics (fleet-wide: every tenant's model names and queue depths)
    metrics_token: SecretStr | None = Field(
        default=None,
        description="Bearer token a Prometheus scraper sends to GET /metrics (an admin access "
        "token is accepted too).",
    )
    metrics_public: bool = Field(
        default=False,
        description="Serve /metrics on the API listener without a token (only where no "
        "untrusted client reaches it).",
    )
    metrics_listen: str = Field(
        default="",
        pattern=r"^$|^[^\s]+:[0-9]{1,5}$",
        description="host:port of a second, plain-HTTP listener serving only /metrics without "
        "a token (bind it to a private interface); empty = none.",
    )

    # embedded
    embedded: bool = Field(default=False, description="Run on the embedded store.")
    data_dir: Path | None = Field(
        default=None,
        description="Embedded store directory (SQLite file + blobs); None = the user's data "
        "directory.",
    )
    sqlite_synchronous: str = Field(
        default="NORMAL",
        pattern="^(NORMAL|FULL)$",
        description="SQLite `synchronous` of the embedded store: NORMAL survives a process "
        "crash, FULL also a power loss (slower).",
    )
    public_url: str | None = Field(
        default=None,
        description="URL clients reach this control plane on (embedded blob URLs); None = "
        "the address it listens on.",
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        yaml_file = os.environ.get("GPUFLEET_CONFIG_FILE")
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if yaml_file:
            sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=Path(yaml_file)))
        return tuple(sources)

    @model_validator(mode="after")
    def _token_lifetimes(self) -> Settings:
        if self.access_token_ttl_s > self.max_token_lifetime_s:
            raise ValueError(
                f"access_token_ttl_s ({self.access_token_ttl_s}) exceeds max_token_lifetime_s "
                f"({self.max_token_lifetime_s}): tokens would be refused at verification"
            )
        return self

    @model_validator(mode="after")
    def _oidc_complete(self) -> Settings:
        from control_plane.services.oidc import parse_role_map

        oidc = {"oidc_issuer", "oidc_audience", "oidc_jwks_url"}
        unset = sorted(f for f in oidc if not getattr(self, f))
        if unset and len(unset) < len(oidc):
            raise ValueError(f"an OpenID issuer needs all of {sorted(oidc)}: {unset} not set")
        if self.oidc_issuer and self.oidc_issuer == self.jwt_issuer:
            raise ValueError("oidc_issuer must differ from jwt_issuer (this control plane's)")
        parse_role_map(self.oidc_role_map)  # raises ValueError naming the bad pair
        if self.oidc_default_role not in ("", "viewer", "user", "admin"):
            raise ValueError("oidc_default_role must be empty, viewer, user or admin")
        return self

    @model_validator(mode="after")
    def _tls_pair(self) -> Settings:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("tls_cert_file and tls_key_file go together: set both or neither")
        if self.tls_client_ca_file is not None and self.tls_cert_file is None:
            raise ValueError("tls_client_ca_file needs tls_cert_file and tls_key_file")
        return self

    def table(self, name: str) -> str:
        return f"{self.table_prefix}-{name}"


def load_settings(**overrides: Any) -> Settings:
    """Build the settings once (env > YAML named by ``GPUFLEET_CONFIG_FILE`` > defaults)."""
    return Settings(**overrides)
