"""Wire schemas of the gpufleet HTTP API v1, shared by the control plane, the runner and the SDK.

Every request model is strict: unknown fields are rejected (``extra="forbid"``). Every
response model carries ``api_version``. The control plane, the runner and the SDK all import
this module; it imports nothing of theirs.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator

from gpufleet.textcheck import safe_text

API_VERSION: Literal["v1"] = "v1"

Datatype = Literal[
    "BOOL",
    "UINT8",
    "UINT16",
    "UINT32",
    "UINT64",
    "INT8",
    "INT16",
    "INT32",
    "INT64",
    "FP16",
    "FP32",
    "FP64",
    "BYTES",
]
DATATYPES: tuple[str, ...] = Datatype.__args__  # type: ignore[attr-defined]

JobStatus = Literal["QUEUED", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLED", "TIMED_OUT"]
# A runner's status (``RunnerView.status``) and a model version's state on a runner
# (``ModelState.state``). The wire fields stay ``str`` (a newer peer may add a value); the
# code that makes them uses these.
RunnerStatus = Literal["ONLINE", "OFFLINE", "DRAINING", "REVOKED"]
ModelLoadState = Literal["LOADING", "READY", "UNAVAILABLE", "UNLOADING"]
TERMINAL_STATUSES: frozenset[str] = frozenset({"SUCCEEDED", "FAILED", "CANCELLED", "TIMED_OUT"})
Role = Literal["admin", "user", "viewer"]
ModelVersionState = Literal["UPLOADING", "READY", "FAILED", "DELETED"]

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$"
VERSION_PATTERN = r"^[1-9][0-9]{0,8}$"
REGION_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
RegionName = Annotated[str, Field(pattern=REGION_PATTERN)]
# Free text a client names things with: no control or bidi characters (gpufleet.textcheck).
SafeText = Annotated[str, AfterValidator(safe_text)]


class Strict(BaseModel):
    """Base of every wire model: unknown fields are an error."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class Response(Strict):
    """Base of every response body."""

    api_version: Literal["v1"] = API_VERSION


class ErrorInfo(Strict):
    code: str
    message: str
    details: Any = None


class ErrorBody(Response):
    error: ErrorInfo


# --------------------------------------------------------------------------- tensors


class Tensor(Strict):
    """A tensor in the KServe v2 / Triton JSON form.

    ``data`` holds the values (flat or nested, row-major). ``data_ref`` instead names a
    payload uploaded to the bucket (see ``POST /v1/payloads``) holding the raw
    little-endian bytes of the tensor (BYTES: 4-byte length-prefixed elements, as in
    Triton's binary tensor extension).
    """

    name: SafeText = Field(min_length=1, max_length=256)
    datatype: Datatype
    shape: list[int] = Field(max_length=16)
    data: list[Any] | None = None
    data_ref: str | None = Field(default=None, max_length=256)
    parameters: dict[str, Any] | None = None

    @field_validator("shape")
    @classmethod
    def _non_negative(cls, v: list[int]) -> list[int]:
        if any(d < 0 for d in v):
            raise ValueError("shape dimensions must be >= 0")
        return v


class OutputRequest(Strict):
    name: SafeText = Field(min_length=1, max_length=256)
    parameters: dict[str, Any] | None = None


# --------------------------------------------------------------------------- jobs


WebhookEventName = Literal["running", "completed"]


class WebhookSpec(Strict):
    url: str = Field(min_length=8, max_length=2048)
    events: list[WebhookEventName] = Field(
        default_factory=lambda: list[WebhookEventName](["completed"])
    )


class JobRequest(Strict):
    api_version: Literal["v1"] = API_VERSION
    model: str = Field(pattern=NAME_PATTERN)
    model_version: str | None = Field(default=None, pattern=VERSION_PATTERN)
    inputs: list[Tensor] = Field(min_length=1, max_length=64)
    outputs: list[OutputRequest] | None = Field(default=None, max_length=64)
    parameters: dict[str, Any] = Field(default_factory=dict)
    priority: int = Field(default=0, ge=0, le=100)
    timeout_s: int = Field(default=600, ge=1, le=86_400)
    ttl_s: int = Field(default=86_400, ge=1, le=7 * 86_400)
    max_attempts: int = Field(default=3, ge=1, le=20)
    region: RegionName | None = Field(
        default=None, description="Preferred region (docs/regions.md)."
    )
    regions_allowed: list[RegionName] | None = Field(
        default=None,
        max_length=64,
        description="Regions the job may run in, never others (data residency); None: the "
        "tenant's or deployment's limit, else any.",
    )
    spill_after_s: float | None = Field(
        default=None,
        ge=0,
        le=86_400,
        description="Seconds to wait for a runner in `region` before the nearest other allowed "
        "region may take the job; None: the server's region_spill_after_s.",
    )
    webhook: WebhookSpec | None = None
    tags: dict[str, str] = Field(default_factory=dict, max_length=32)


class InferRequest(Strict):
    """``POST /v1/models/{model}/infer``: synchronous inference, same tensors as a job."""

    api_version: Literal["v1"] = API_VERSION
    model_version: str | None = Field(default=None, pattern=VERSION_PATTERN)
    inputs: list[Tensor] = Field(min_length=1, max_length=64)
    outputs: list[OutputRequest] | None = Field(default=None, max_length=64)
    parameters: dict[str, Any] = Field(default_factory=dict)
    timeout_s: float | None = Field(
        default=None, gt=0, le=3600, description="Default: the server's infer_wait_s."
    )
    region: RegionName | None = Field(
        default=None, description="Preferred region (docs/regions.md)."
    )
    regions_allowed: list[RegionName] | None = Field(
        default=None, max_length=64, description="Regions it may run in, never others."
    )


class InferResponse(Response):
    """The answer of a synchronous inference.

    ``path`` says how it ran: ``dispatch`` (in memory to a connected runner) or ``job``
    (the durable queue; ``job_id`` names the job). ``timings`` (milliseconds) break the
    runner's time down: ``receive`` (frame to Triton call), ``triton``, ``total``.
    Outputs a job stored in the bucket (over the inline limit) are not sent inline:
    ``outputs`` is empty and ``outputs_url`` a presigned URL of them."""

    model: str
    model_version: str
    outputs: list[Tensor]
    outputs_url: str | None = None  # large job outputs: fetch (Triton's binary layout)
    path: Literal["dispatch", "job"]
    job_id: str | None = None
    runner_id: str | None = None
    timings: dict[str, float] | None = None


class BatchJobRequest(Strict):
    api_version: Literal["v1"] = API_VERSION
    jobs: list[JobRequest] = Field(min_length=1, max_length=100)


class JobAccepted(Response):
    id: str
    status: JobStatus
    created_at: str


class BatchAccepted(Response):
    ids: list[str]


class JobView(Response):
    id: str
    status: JobStatus
    model: str
    model_version: str | None = None
    priority: int = 0
    attempts: int = 0
    max_attempts: int = 3
    created_at: str
    started_at: str | None = None
    finished_at: str | None = None
    queue_ms: int | None = None
    run_ms: int | None = None
    runner_id: str | None = None
    region: str | None = None
    regions_allowed: list[str] | None = None
    spill_after_s: float | None = None
    tags: dict[str, str] = Field(default_factory=dict)
    outputs: list[Tensor] | None = None
    outputs_url: str | None = None
    error: ErrorInfo | None = None
    waiting_reason: str | None = None
    # True when the job waited for a host that the capacity autoscaler started after it was
    # submitted (a cold host); False when its runner was up already; None: unknown.
    cold_host: bool | None = None
    # The job waited for its model version to load on the runner (a cold start), and how
    # long that load took; run_ms is then the model's own time (Triton's compute) and
    # runner_ms the runner's overhead around it (transport, payloads).
    cold_start: bool | None = None
    load_ms: int | None = None
    runner_ms: int | None = None


class JobList(Response):
    jobs: list[JobView]
    next_cursor: str | None = None


class PayloadUploadRequest(Strict):
    """Ask for a presigned upload of a large input tensor."""

    api_version: Literal["v1"] = API_VERSION
    size: int = Field(ge=1, le=5 * 1024**3)


class PayloadUpload(Response):
    ref: str
    url: str
    method: Literal["PUT"] = "PUT"
    headers: dict[str, str] = Field(default_factory=dict)


# --------------------------------------------------------------------------- auth


class TokenRequest(Strict):
    api_version: Literal["v1"] = API_VERSION
    api_key: str = Field(min_length=8, max_length=256)


class RefreshRequest(Strict):
    api_version: Literal["v1"] = API_VERSION
    refresh_token: str = Field(min_length=8, max_length=4096)


class TokenPair(Response):
    access_token: str
    refresh_token: str
    token_type: Literal["Bearer"] = "Bearer"  # noqa: S105  (the OAuth token type)
    expires_in: int


class ApiKeyCreate(Strict):
    api_version: Literal["v1"] = API_VERSION
    tenant: str = Field(pattern=NAME_PATTERN)
    role: Role
    name: SafeText = Field(default="", max_length=128)


class ApiKeyCreated(Response):
    id: str
    api_key: str
    tenant: str
    role: Role


class ApiKeyView(Response):
    """An API key as ``GET /v1/admin/api-keys`` lists it (never its secret)."""

    id: str
    tenant: str
    role: Role
    name: str = ""
    created_at: str
    revoked: bool = False
    previous_valid_until: str | None = None  # after a rotation: the old secret works until


class ApiKeyRotate(Strict):
    """``POST /v1/admin/api-keys/{id}/rotate``: a new secret; the old one keeps working for
    ``old_valid_for_s`` more seconds (0: it stops at once)."""

    api_version: Literal["v1"] = API_VERSION
    old_valid_for_s: int = Field(default=3600, ge=0, le=30 * 86_400)


class ApiKeyRotated(Response):
    id: str
    api_key: str
    old_valid_until: str


class ApiKeyList(Response):
    keys: list[ApiKeyView]


class JoinTokenCreate(Strict):
    api_version: Literal["v1"] = API_VERSION
    region: SafeText = Field(default="default", max_length=64)
    labels: dict[SafeText, SafeText] = Field(default_factory=dict, max_length=32)
    expires_in_s: int = Field(default=3600, ge=60, le=30 * 86_400)
    max_uses: int = Field(default=1, ge=1, le=100_000)  # runners it may register


class JoinTokenCreated(Response):
    join_token: str
    expires_at: str
    id: str | None = None  # what `GET /v1/admin/join-tokens` lists and DELETE takes
    max_uses: int | None = None


class JoinTokenView(Response):
    """A join token as listed (never the token itself): ``id`` is ``jt_`` + 16 hex of its
    sha256."""

    id: str
    region: str
    labels: dict[str, str] = Field(default_factory=dict)
    expires_at: str
    max_uses: int | None = None  # None: no limit (a token issued before use limits)
    uses: int = 0  # runners registered with it (their `join_token` names this token's id)
    last_used_at: str | None = None


class JoinTokenList(Response):
    tokens: list[JoinTokenView]


class JoinTokenCheckRequest(Strict):
    """``POST /v1/runners/join-tokens/check``: would this join token register a runner now?
    (Uses none of it: ``gpufleet-runner configure`` asks before it writes a config.)"""

    api_version: Literal["v1"] = API_VERSION
    join_token: str = Field(min_length=8, max_length=512)


class JoinTokenCheck(Response):
    """A join token that would register a runner now (a refused one is a 401 error)."""

    id: str  # as `GET /v1/admin/join-tokens` lists it
    region: str
    expires_at: str
    uses_left: int | None = None  # None: no limit


# --------------------------------------------------------------------------- runners


class GpuInfo(Strict):
    index: int = Field(ge=0)
    uuid: str
    name: str
    memory_total_mb: int = Field(ge=0)
    memory_used_mb: int = Field(ge=0)
    utilization_pct: float | None = None
    temperature_c: float | None = None
    power_w: float | None = None


class ModelRef(Strict):
    name: str = Field(pattern=NAME_PATTERN)
    version: str = Field(pattern=VERSION_PATTERN)


class DesiredFile(Strict):
    """One file of a desired model version and where to fetch it.

    ``path`` is relative to the model's directory in Triton's layout (``config.pbtxt``,
    ``<version>/model.py``, ...). ``url`` is a presigned GET of the object in the bucket,
    valid for the control plane's ``presign_ttl_s``; a runner that finds it expired asks
    again with its next heartbeat. ``size`` and ``sha256`` are what the upload was verified
    against: a runner must check both before using the file.
    """

    path: str = Field(min_length=1, max_length=1024)
    size: int = Field(ge=0)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    url: str | None = None


class DesiredModel(ModelRef):
    """A model version the runner should serve (an entry of ``desired_models``).

    - ``gpus``: the GPU indexes chosen for it (pin it with ``instance_group { gpus: [...] }``);
      None = wherever Triton puts it.
    - ``files``: every file of the version with a presigned GET each (see ``DesiredFile``).
    - ``memory_mb``: the GPU memory the placement counted for it (measured on this GPU type
      when known, else the deployment's declared ``gpu_memory_mb``); informational.
    - ``managed``: False for a model the runner reported that no deployment governs (kept as
      the runner has it: nothing to download, nothing to unload; ``files`` is empty).

    ``desired_models`` itself is None when no deployment exists at all: the runner then
    serves every model of its local repository (the behaviour before placement existed).
    A list means: serve exactly these (unload managed models not listed).
    """

    gpus: list[int] | None = None
    files: list[DesiredFile] = Field(default_factory=list)
    memory_mb: int | None = None
    managed: bool = True


class ModelState(Strict):
    name: str
    version: str
    state: str  # LOADING | READY | UNAVAILABLE | UNLOADING
    reason: str | None = None
    memory_mb: int | None = None


class RunnerConfig(Strict):
    """Runtime settings of a runner, stored at the control plane (runners are dumb terminals)."""

    max_concurrency: int = Field(default=8, ge=1, le=1024)
    acceptance_rate: float = Field(default=1.0, ge=0.0, le=1.0)
    drain: bool = False
    heartbeat_interval_s: float = Field(default=5.0, ge=0.5, le=300)
    lease_wait_s: float = Field(default=10.0, ge=0.0, le=20.0)


class RunnerConfigPatch(Strict):
    api_version: Literal["v1"] = API_VERSION
    max_concurrency: int | None = Field(default=None, ge=1, le=1024)
    acceptance_rate: float | None = Field(default=None, ge=0.0, le=1.0)
    drain: bool | None = None
    heartbeat_interval_s: float | None = Field(default=None, ge=0.5, le=300)
    lease_wait_s: float | None = Field(default=None, ge=0.0, le=20.0)


class RegisterRequest(Strict):
    api_version: Literal["v1"] = API_VERSION
    join_token: str = Field(min_length=8, max_length=512)
    name: SafeText = Field(min_length=1, max_length=128)
    region: SafeText | None = Field(default=None, max_length=64)
    labels: dict[SafeText, SafeText] = Field(default_factory=dict, max_length=32)
    gpus: list[GpuInfo] = Field(default_factory=list, max_length=64)


class RegisterResponse(Response):
    runner_id: str
    secret: str


class HeartbeatRequest(Strict):
    api_version: Literal["v1"] = API_VERSION
    gpus: list[GpuInfo] = Field(default_factory=list, max_length=64)
    models: list[ModelState] = Field(default_factory=list, max_length=1024)
    triton: dict[str, Any] = Field(default_factory=dict)
    running_jobs: list[str] = Field(default_factory=list, max_length=4096)
    rtt_ms: float | None = Field(
        default=None,
        ge=0,
        le=60_000,
        description="Round-trip time of the runner's previous call to the control plane.",
    )


class HeartbeatResponse(Response):
    config: RunnerConfig
    desired_models: list[DesiredModel] | None = None
    cancel_jobs: list[str] = Field(default_factory=list)
    # HMAC secret rotation: sign every later call with this secret (store it first); the
    # control plane takes the first call signed with it as the confirmation. Sent again in
    # each answer until then.
    new_secret: str | None = None


class LeaseRequest(Strict):
    api_version: Literal["v1"] = API_VERSION
    models: list[ModelRef] = Field(max_length=1024)
    max_jobs: int = Field(default=1, ge=1, le=100)
    wait_s: float = Field(default=0.0, ge=0.0, le=20.0)


class ResultUpload(Strict):
    """Where a runner puts outputs too large to inline (then completes with ``outputs_ref``).

    The object is Triton's binary tensor extension with a newline for the header length: one
    line of JSON ``{"outputs":[{"name","datatype","shape","parameters":{"binary_data_size"}}]}``,
    ``\n``, then each tensor's raw bytes in that order. Outputs whose JSON fits in
    ``max_inline_bytes`` are sent inline instead.
    """

    ref: str
    url: str
    method: Literal["PUT"] = "PUT"
    headers: dict[str, str] = Field(default_factory=dict)
    max_inline_bytes: int


class LeasedJob(Strict):
    """A leased job. ``input_urls`` maps each ``data_ref`` input's name to a presigned GET of
    its raw bytes; ``outputs_upload`` is where large outputs go (see :class:`ResultUpload`)."""

    id: str
    lease_token: str
    lease_expires_at: str
    model: str
    model_version: str
    inputs: list[Tensor]
    outputs: list[OutputRequest] | None = None
    parameters: dict[str, Any] = Field(default_factory=dict)
    timeout_s: int
    attempt: int
    deadline_at: str | None = None
    input_urls: dict[str, str] = Field(default_factory=dict)
    outputs_upload: ResultUpload | None = None
    # X-Request-ID of the submit: the runner's log lines about the job carry it
    request_id: str | None = None


class LeaseResponse(Response):
    jobs: list[LeasedJob]


class ExtendRequest(Strict):
    api_version: Literal["v1"] = API_VERSION
    lease_token: str


class ExtendResponse(Response):
    lease_expires_at: str


MAX_JOB_LOG_CHARS = 256 * 1024  # of a job's logs kept by the control plane (the newest)


class JobLogs(Response):
    """``GET /v1/jobs/{id}/logs``: what the runner said about the job and what the model
    printed while it ran (``runner | …`` and ``model  | …`` lines), kept with the job."""

    id: str
    status: JobStatus
    logs: str = ""
    truncated: bool = False


class CompleteRequest(Strict):
    api_version: Literal["v1"] = API_VERSION
    lease_token: str
    status: Literal["SUCCEEDED", "FAILED"]
    outputs: list[Tensor] | None = None
    outputs_ref: str | None = None
    error: ErrorInfo | None = None
    timings: dict[str, float] | None = None
    # the job's logs (the runner's lines about it, the model's output while it ran); the
    # control plane keeps the last MAX_JOB_LOG_CHARS (runners send at most 64 KiB)
    logs: str | None = None


class CompleteResponse(Response):
    id: str
    status: JobStatus


MAX_COMPLETE_BATCH = 100


class CompleteItem(Strict):
    """One result of a batch complete: a ``CompleteRequest`` for the job ``job_id``."""

    job_id: str
    lease_token: str
    status: Literal["SUCCEEDED", "FAILED"]
    outputs: list[Tensor] | None = None
    outputs_ref: str | None = None
    error: ErrorInfo | None = None
    timings: dict[str, float] | None = None
    logs: str | None = None


class BatchCompleteRequest(Strict):
    """``POST /v1/runners/{id}/complete``: up to 100 results, each fenced by its own lease
    token exactly like the single complete."""

    api_version: Literal["v1"] = API_VERSION
    results: list[CompleteItem] = Field(min_length=1, max_length=MAX_COMPLETE_BATCH)


CompleteOutcome = Literal["committed", "conflict", "not_found", "invalid"]


class CompleteItemResult(Strict):
    """What became of one result: ``committed`` (also a retry of a result already committed),
    ``conflict`` (the single complete's 409: stale lease token), ``not_found`` (its 404),
    ``invalid`` (its 422, e.g. an ``outputs_ref`` that is not this lease's); ``error`` says
    why for all but ``committed``."""

    job_id: str
    status: CompleteOutcome
    error: ErrorInfo | None = None


class BatchCompleteResponse(Response):
    results: list[CompleteItemResult]  # in the order of the request's results


class RunnerView(Response):
    id: str
    name: str
    region: str
    labels: dict[str, str] = Field(default_factory=dict)
    status: str  # ONLINE | OFFLINE | DRAINING | REVOKED
    registered_at: str
    last_heartbeat_at: str | None = None
    gpus: list[GpuInfo] = Field(default_factory=list)
    models: list[ModelState] = Field(default_factory=list)
    triton: dict[str, Any] = Field(default_factory=dict)
    running_jobs: list[str] = Field(default_factory=list)
    config: RunnerConfig = Field(default_factory=RunnerConfig)
    rtt_ms: float | None = None  # its region's measured round trip to this control plane
    secret_set_at: str | None = None  # when its current HMAC secret began
    secret_rotation_pending: bool = False  # a new secret offered, not yet used by the runner
    join_token: str | None = None  # id (jt_…) of the join token it registered with


class RunnerList(Response):
    runners: list[RunnerView]
    # region -> status (ONLINE, OFFLINE, DRAINING, REVOKED) -> number of runners
    by_region: dict[str, dict[str, int]] = Field(default_factory=dict)


class RegionInfo(Response):
    """One region of ``GET /v1/regions``."""

    region: str
    live_runners: int = 0
    location: list[float] | None = None  # [latitude, longitude] from the static table
    rtt_to_control_plane_ms: float | None = None  # measured by its runners' heartbeats
    samples: int = 0


class RegionLatency(Response):
    """Round trip between two regions: ``static_ms`` (from their locations), ``measured_ms``
    (from heartbeats, for pairs with the control plane's region), ``rtt_ms`` the one used."""

    from_region: str
    to_region: str
    static_ms: float | None = None
    measured_ms: float | None = None
    rtt_ms: float
    source: Literal["measured", "static", "unknown"]


class RegionTable(Response):
    """``GET /v1/regions``: what geo-aware leasing ranks regions by (docs/regions.md)."""

    control_plane_region: str | None = None
    default_spill_after_s: float
    regions: list[RegionInfo]
    latency: list[RegionLatency]


# --------------------------------------------------------------------------- models


class FileSpec(Strict):
    path: str = Field(min_length=1, max_length=1024)
    size: int = Field(ge=0)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


class CreateVersionRequest(Strict):
    """``POST /v1/models/{name}/versions``. ``config``: the text of ``config.pbtxt`` (its
    sha256 must be the one in ``files``), parsed before any upload URL is handed out."""

    api_version: Literal["v1"] = API_VERSION
    version: str | None = Field(default=None, pattern=VERSION_PATTERN)
    files: list[FileSpec] = Field(min_length=1, max_length=10_000)
    config: str | None = Field(default=None, max_length=1_048_576)


class MultipartPart(Strict):
    number: int
    url: str


class MultipartUpload(Strict):
    upload_id: str
    part_size: int
    parts: list[MultipartPart]


class UploadTarget(Strict):
    path: str
    method: Literal["PUT"] | None = None
    url: str | None = None
    headers: dict[str, str] = Field(default_factory=dict)
    multipart: MultipartUpload | None = None


class CreateVersionResponse(Response):
    """201 with ``UPLOADING`` and upload targets; 200 with ``READY`` and no uploads when a
    READY version with the same content exists (that version: nothing to upload)."""

    name: str
    version: str
    state: ModelVersionState
    uploads: list[UploadTarget]


class CommitRequest(Strict):
    api_version: Literal["v1"] = API_VERSION
    parts: dict[str, list[str]] = Field(default_factory=dict)


class TensorSpec(Strict):
    name: str
    datatype: str
    shape: list[int]


class ModelVersionView(Response):
    name: str
    version: str
    state: ModelVersionState
    created_at: str
    platform: str | None = None
    max_batch_size: int = 0
    inputs: list[TensorSpec] = Field(default_factory=list)
    outputs: list[TensorSpec] = Field(default_factory=list)
    files: list[FileSpec] = Field(default_factory=list)
    config: dict[str, Any] = Field(default_factory=dict)
    loaded_on: list[str] = Field(default_factory=list)


class ModelView(Response):
    name: str
    tenant: str
    versions: list[ModelVersionView]


class ModelList(Response):
    models: list[ModelView]


class DeploymentSpec(Strict):
    api_version: Literal["v1"] = API_VERSION
    min_replicas: int = Field(default=1, ge=0, le=1000)
    max_replicas: int = Field(default=1, ge=0, le=1000)
    regions: list[str] = Field(default_factory=list, max_length=32)
    gpu_memory_mb: int | None = Field(default=None, ge=0)
    pool: str | None = Field(default=None, min_length=1, max_length=63)
    default_region: str | None = Field(
        default=None,
        max_length=64,
        description="Preferred region of this model's jobs and calls that name none (after "
        "the tenant's default; docs/regions.md).",
    )
    regions_allowed: list[str] = Field(
        default_factory=list,
        max_length=64,
        description="Regions this model's jobs may run in when the request and the tenant "
        "set no limit; empty: any.",
    )
    region_buckets: dict[str, str] = Field(
        default_factory=dict,
        max_length=64,
        description="Region -> bucket (or S3 access point) holding a copy of the model's "
        "files: runners of that region fetch from it; new versions are copied there.",
    )


class DeploymentView(Response):
    """``GET /v1/models/{name}/deployment``: the spec, the decided placement, what runs.

    ``observed`` has one entry per placed (runner, version) with ``desired: true`` and the
    state its runner last reported (``PENDING`` until it reports the version), and one
    ``desired: false`` entry per runner still holding a version that is no longer placed
    there (unloading). Entry fields: ``runner_id``, ``region``, ``version``, ``gpu``,
    ``memory_mb``, ``desired``, ``state``. ``replicas`` is the replica count the autoscaler
    wants now; ``reason`` says why fewer are placed (no runner in the regions, not enough
    GPU memory, no READY version). ``implicit`` is true for the deployment a pushed model gets
    by itself (min 0, max 1 replica by default) until a PUT replaces it.
    """

    name: str
    desired: DeploymentSpec
    observed: list[dict[str, Any]] = Field(default_factory=list)
    replicas: int = 0
    reason: str | None = None
    implicit: bool = False


class PoolProvider(Strict):
    """The engine that starts and stops a pool's hosts, and its settings (see docs/capacity.md:
    ``docker``: image, env, volumes, control_plane_url, stop_timeout_s; ``aws-asg``:
    group, region, endpoint_url, lifecycle_hook)."""

    kind: Literal["docker", "aws-asg"]
    settings: dict[str, Any] = Field(default_factory=dict)


class PoolSpec(Strict):
    """``PUT /v1/pools/{name}``: a kind of host and how many of them the autoscaler may run."""

    api_version: Literal["v1"] = API_VERSION
    gpu_type: SafeText | None = Field(default=None, max_length=64)
    gpu_count: int = Field(default=0, ge=0, le=64)
    # memory of one GPU of a host: models that need more are not routed to the pool
    gpu_memory_mb: int | None = Field(default=None, ge=1, le=10_000_000)
    region: SafeText = Field(default="default", min_length=1, max_length=64)
    labels: dict[SafeText, SafeText] = Field(default_factory=dict, max_length=32)
    models: list[str] = Field(default_factory=list, max_length=256)
    min_hosts: int = Field(default=0, ge=0, le=1000)
    max_hosts: int = Field(default=1, ge=0, le=1000)
    warm_hosts: int = Field(default=0, ge=0, le=1000)
    idle_timeout_s: float = Field(default=300.0, ge=0, le=7 * 86400)
    launch_budget_per_min: int = Field(default=10, ge=1, le=1000)
    join_timeout_s: float = Field(default=600.0, gt=0, le=86400)
    jobs_per_host: int = Field(default=1, ge=1, le=10_000)
    scale_up_wait_s: float = Field(default=0.0, ge=0, le=86400)
    launch_backoff_s: float = Field(default=30.0, ge=0, le=86400)
    provider: PoolProvider


class PoolHost(Strict):
    """One host of a pool as the last capacity decision saw it."""

    id: str
    state: str  # starting | up | draining | stopping
    launched_at: str | None = None
    runner_id: str | None = None
    running_jobs: int = 0
    protected: bool = False
    idle_since: str | None = None


class PoolEvent(Strict):
    """One entry of a pool's decision log."""

    at: str
    action: str  # launch | drain | undrain | terminate | protect | unprotect | error
    host: str | None = None
    reason: str


class PoolView(Response):
    """``GET /v1/pools/{name}``: the spec, the last decision (target, hosts, reason) and the
    newest entries of the decision log."""

    name: str
    spec: PoolSpec
    created_at: str
    updated_at: str
    target: int = 0
    hosts: list[PoolHost] = Field(default_factory=list)
    reason: str | None = None
    decided_at: str | None = None
    failed_launches: int = 0
    backoff_until: str | None = None
    events: list[PoolEvent] = Field(default_factory=list)


class PoolList(Response):
    pools: list[PoolView] = Field(default_factory=list)


class HealthView(Response):
    status: Literal["ok", "degraded"]
    version: str
    checks: dict[str, str] = Field(default_factory=dict)


class WebhookSecret(Response):
    secret: str


class WebhookEvent(Strict):
    """The body of a webhook delivery (signed with Standard Webhooks headers)."""

    type: Literal["job.running", "job.completed"]
    timestamp: str
    data: JobView


class WebhookAttemptView(Strict):
    """One delivery attempt: when, the receiver's status code or the error, how long."""

    attempt: int
    at: str
    duration_ms: int
    status_code: int | None = None
    error: str | None = None


class WebhookDeliveryView(Strict):
    """One event of a job to its webhook URL, with every attempt so far."""

    id: str
    type: Literal["job.running", "job.completed"]
    url: str
    status: Literal["pending", "sending", "delivered", "failed", "disabled"]
    created_at: str
    next_attempt_at: str | None = None
    attempts: list[WebhookAttemptView] = Field(default_factory=list)


class WebhookDeliveryList(Response):
    """``GET /v1/jobs/{id}/webhooks``: the job's delivery log."""

    job_id: str
    deliveries: list[WebhookDeliveryView]


# ---------------------------------------------------------------- streaming (docs/streaming.md)
MAX_STREAM_CHUNKS = 64  # chunks per append call


class StreamChunk(Strict):
    """One partial output: the output tensors of one response of a decoupled model."""

    seq: int = Field(ge=0, le=10**9 - 1)  # 0, 1, … within one attempt of the job
    outputs: list[Tensor] = Field(max_length=64)


class ChunksRequest(Strict):
    """``POST /v1/runners/{id}/chunks`` (or a ``chunks`` frame on the runner channel): partial
    outputs of a running job, fenced by its lease token like its result."""

    api_version: Literal["v1"] = API_VERSION
    job_id: str
    lease_token: str
    attempt: int = Field(ge=1, le=99_999)
    chunks: list[StreamChunk] = Field(min_length=1, max_length=MAX_STREAM_CHUNKS)


class ChunksResponse(Response):
    stored: int


class StreamChunkView(Strict):
    """``data`` of a ``chunk`` event of ``GET /v1/jobs/{id}/stream`` (its SSE ``id`` is
    ``<attempt>-<seq>``)."""

    job_id: str
    attempt: int
    seq: int
    outputs: list[Tensor]


class DirectRequest(Strict):
    """``POST /v1/models/{name}/direct``: a ticket to call a runner serving the model directly
    (docs/direct.md). ``version``: pin one (default: the newest READY); ``region``: prefer a
    runner there."""

    api_version: Literal["v1"] = API_VERSION
    version: str | None = Field(default=None, pattern=VERSION_PATTERN)
    region: str | None = Field(default=None, min_length=1, max_length=64)


class DirectTicket(Response):
    """A runner's direct KServe v2 endpoint (HTTP ``url``; gRPC ``grpc_url`` when it serves
    one) and a ticket (JWT, audience = that runner) for ``Authorization: Bearer``; valid
    until ``expires_at`` (at most 5 minutes)."""

    url: str
    ticket: str
    expires_at: str
    expires_in: int
    runner_id: str
    grpc_url: str | None = None  # host:port of the runner's KServe gRPC, when it serves one
    model: str
    version: str
    region: str | None = None


class SigningKeyView(Strict):
    """One asymmetric signing key (public part only)."""

    kid: str
    alg: str
    created_at: str
    retired_at: str | None = None
    verifies_until: str | None = None  # None: the current key
    current: bool


class SigningKeyList(Response):
    """``GET /v1/admin/signing-keys``: keys that still verify, the current one first."""

    keys: list[SigningKeyView]


# ---------------------------------------------------------------------- quotas (admin)
class QuotaSpec(Strict):
    """``PUT /v1/admin/tenants/{tenant}/quotas``: a tenant's own quotas; a field left out
    (or null) takes the control plane's default. 0 means no limit."""

    api_version: Literal["v1"] = API_VERSION
    max_queued: int | None = Field(default=None, ge=0, description="Jobs queued at once.")
    max_running: int | None = Field(default=None, ge=0, description="Jobs running at once.")
    submit_rate: float | None = Field(
        default=None, ge=0, le=1e6, description="Jobs submitted per second (per replica)."
    )
    submit_burst: int | None = Field(
        default=None, ge=0, le=1_000_000, description="Token bucket size of submit_rate."
    )
    weight: float | None = Field(
        default=None, gt=0, le=1000, description="Share of a shared model pool vs other tenants."
    )


class QuotaView(Response):
    """A tenant's effective quotas (``own``: what was set for it), and its queued and running
    jobs as counted."""

    tenant: str
    max_queued: int
    max_running: int
    submit_rate: float
    submit_burst: int
    weight: float
    queued: int
    running: int
    own: QuotaSpec | None = None
    updated_at: str | None = None


class QuotaList(Response):
    """``GET /v1/admin/quotas``: the defaults, and every tenant with quotas or jobs."""

    defaults: QuotaSpec
    tenants: list[QuotaView] = Field(default_factory=list)


class KeyLimitsSpec(Strict):
    """``PUT /v1/admin/api-keys/{id}/limits``: the highest priority the key may submit at
    (null: back to the default)."""

    api_version: Literal["v1"] = API_VERSION
    max_priority: int | None = Field(default=None, ge=0, le=100)


class KeyLimits(Response):
    key_id: str
    max_priority: int


class RegionDefaultsSpec(Strict):
    """``PUT /v1/admin/tenants/{tenant}/regions`` and ``PUT /v1/admin/api-keys/{id}/regions``:
    the region defaults of a tenant or an API key (replaces what was set; docs/regions.md)."""

    api_version: Literal["v1"] = API_VERSION
    default_region: RegionName | None = Field(
        default=None,
        description="Preferred region of requests that name none; must be one of "
        "regions_allowed when that is set.",
    )
    regions_allowed: list[RegionName] = Field(
        default_factory=list,
        max_length=64,
        description="Hard limit on where jobs and calls run (data residency); empty: any. "
        "Requests cannot widen it; an API key's limit narrows its tenant's.",
    )


class RegionDefaultsView(Response):
    """The region defaults of a tenant (``scope = "tenant"``) or an API key (``"key"``):
    what was set (``source``: ``stored`` by an admin, ``settings`` from ``tenant_regions``,
    ``none``) and ``effective``: what a request naming no region gets before the
    deployment's defaults (a key's merged with its tenant's)."""

    scope: Literal["tenant", "key"]
    tenant: str | None = None
    key_id: str | None = None
    default_region: str | None = None
    regions_allowed: list[str] = Field(default_factory=list)
    source: Literal["stored", "settings", "none"]
    effective: RegionDefaultsSpec
    updated_at: str | None = None


class RegionDefaultsList(Response):
    """``GET /v1/admin/regions``: every tenant and API key with region defaults."""

    tenants: list[RegionDefaultsView] = Field(default_factory=list)
    keys: list[RegionDefaultsView] = Field(default_factory=list)
