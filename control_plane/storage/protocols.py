"""Records and store protocols of the job queue and the model repository.

Services depend only on these protocols. Two implementations, held to one contract suite
(``tests/contract/``): the DynamoDB/S3 adapters (``dynamo_jobs.py``, ``dynamo_queue.py``,
``dynamo_idempotency.py``, ``dynamo_models.py``, ``blobs.py``) and the embedded SQLite
adapters (``sqlite/*.py``, ``local_blobs.py``). Each method's docstring is its contract: what
it returns, which write wins a race, what a lost condition answers, ordering, expiry and
errors; an adapter that meets these docstrings is a complete one.

Rules for every store:

- Errors: a backend that cannot be reached or fails (throttling, I/O error, locked past its
  timeout, closed) raises ``control_plane.errors.Unavailable``; no backend exception leaves
  an adapter. A lost condition is an answer (``None``/``False``/the winner's record), never an
  error, unless the method says otherwise (``Conflict``).
- Reads are strongly consistent (they see every write that returned before them) unless the
  method says "may lag".
- Times are Unix seconds (floats); "expired" means ``expires_at < now`` unless stated.
- Keys and cursors the stores hand out (``QueueEntry.shard``/``sk``, ``Marker`` keys,
  ``JobRecord.queue_key``/``lease_key``, ``list_jobs`` cursors) are opaque: services pass
  them back unchanged and never build or parse them (``QueueStore.keys`` builds them from
  typed values).

The job item is the single source of truth. Queue entries and markers are indexes that may be
stale for a moment (or after a crash between two writes); every reader checks them against the
job item with a conditional write, so a stale index entry can cost a wasted read, never a
double claim or a lost job.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Protocol

from gpufleet.wire import JobStatus, ModelVersionState


@dataclass
class JobRecord:
    """One job as stored in the ``jobs`` table.

    ``queue_key`` / ``lease_key``: the opaque ``(shard, sk)`` of the job's queue entry / lease
    marker, as ``QueueStore.keys`` made them; stored and returned unchanged.
    """

    id: str
    tenant: str
    model: str
    model_version: str | None
    pinned: bool
    status: JobStatus
    priority: int
    created_at: float
    timeout_s: int
    ttl_s: int
    max_attempts: int
    region: str | None
    request: dict[str, Any]  # inputs, outputs, parameters, webhook, tags
    attempts: int = 0
    started_at: float | None = None
    finished_at: float | None = None
    runner_id: str | None = None
    lease_token: str | None = None
    lease_expires_at: float | None = None
    lease_key: tuple[str, str] | None = None  # (shard, sk) of the lease marker
    queue_key: tuple[str, str] | None = None  # (shard, sk) of the queue entry
    queue_token: str | None = None  # token of the current queue entry
    outputs: list[dict[str, Any]] | None = None
    outputs_ref: str | None = None
    error: dict[str, Any] | None = None
    run_ms: int | None = None
    # How many times a running attempt of this job was finished: 1 for every job that ended
    # from RUNNING, 0 for one that ended queued. Written in the same conditional write as the
    # terminal status, so a second commit of one job would show here (the soak checks it).
    commits: int = 0
    # how the run went, from the runner's timings: cold_start, load_ms, runner_ms
    run_info: dict[str, Any] | None = None

    @property
    def deadline(self) -> float | None:
        """End of the running attempt's time budget (``started_at + timeout_s``)."""
        return None if self.started_at is None else self.started_at + self.timeout_s

    @property
    def ttl_deadline(self) -> float:
        """Queued past this instant, the job times out."""
        return self.created_at + self.ttl_s


@dataclass(frozen=True)
class QueueEntry:
    """A claimable job in one queue shard. ``token`` must equal the job's ``queue_token``.

    Make one with ``QueueStore.keys.entry(...)``; the store reads them back equal. ``shard``
    and ``sk`` are the store's opaque keys (pass them back unchanged); the sks of every shard
    of one model compare in claim order: a smaller ``sk`` has the higher ``priority``, or the
    same priority and an earlier ``created_at`` (milliseconds). ``model``, ``shard_number``,
    ``priority`` and ``created_at`` (whole milliseconds) are the typed values behind the keys.
    """

    shard: str
    sk: str
    job_id: str
    version: str  # "" = any version
    region: str  # "" = any region
    ttl_deadline: float
    token: str
    timeout_s: int = 0
    model: str = ""
    shard_number: int = 0
    priority: int = 0
    created_at: float = 0.0
    tenant: str = ""  # who submitted the job (fair leasing); "": written before tenants


@dataclass(frozen=True)
class Marker:
    """A lease-expiry or queue-TTL marker: opaque ``(shard, sk)`` ordered by the instant it
    fires (make one with ``QueueStore.keys.lease_marker`` / ``ttl_marker``)."""

    shard: str
    sk: str
    job_id: str
    token: str = ""


@dataclass(frozen=True)
class JobClaim:
    """One QUEUED -> RUNNING of a batch claim (``JobRecordStore.claim_jobs``): the arguments
    ``claim_job`` takes for one job, less the runner and time the batch shares."""

    job_id: str
    queue_token: str
    lease_token: str
    version: str
    lease_expires_at: float
    lease_key: tuple[str, str]


@dataclass(frozen=True)
class JobFinish:
    """One RUNNING -> terminal of a batch commit (``JobRecordStore.finish_running_jobs``):
    the arguments ``finish_running`` takes for one job, less the time the batch shares."""

    job_id: str
    lease_token: str
    status: str
    outputs_json: str | None = None
    outputs_ref: str | None = None
    error: dict[str, Any] | None = None
    run_ms: int | None = None
    run_info: dict[str, Any] | None = None


@dataclass(frozen=True)
class IdempotencyRecord:
    """What the first submit with a key stored: enough to rebuild the same job."""

    key: str
    body_hash: str
    job_id: str
    created_at: float
    shard: int
    queue_token: str
    expires_at: float


@dataclass
class ModelVersionRecord:
    """One version of a model in the ``models`` table."""

    name: str
    version: str
    tenant: str
    state: ModelVersionState
    created_at: float
    files: list[dict[str, Any]]
    uploads: dict[str, str] = field(default_factory=dict)  # path -> multipart upload id
    platform: str | None = None
    backend: str | None = None
    max_batch_size: int = 0
    inputs: list[dict[str, Any]] = field(default_factory=list)
    outputs: list[dict[str, Any]] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)


class JobRecordStore(Protocol):
    """The job records (one item per job: the source of truth); every change is conditional
    on the job's current status and token.

    Names: ``JobRecordStore`` is this protocol, one store of job records
    (``DynamoJobRecordStore`` on the ``jobs`` table, ``SqliteJobRecordStore`` on the embedded
    store); ``JobServiceStores`` is the bundle the job service is given: this store, the queue
    indexes (``QueueStore``) and the idempotency keys (``IdempotencyStore``).

    Transitions (each one conditional write; a lost condition answers ``None``/``False`` and
    writes nothing; a won one returns the record as committed)::

        QUEUED  --claim_job       (queue_token)-->  RUNNING   new lease_token (fencing token)
        QUEUED  --finish_queued   (queue_token)-->  CANCELLED | TIMED_OUT
        RUNNING --extend_lease    (lease_token, runner_id)--> RUNNING  later expiry
        RUNNING --requeue_running (lease_token, expired)-->   QUEUED   new queue_token
        RUNNING --finish_running  (lease_token)-->  SUCCEEDED | FAILED | CANCELLED | TIMED_OUT

    Terminal jobs never change. Of concurrent transitions of one job, exactly one wins.
    """

    def create_job(self, job: JobRecord) -> bool:
        """Store a new job: its identity, request, status, priority, times, ``attempts``
        and queue key and token (the run fields, lease to outputs, start empty); False,
        writing nothing, when a job with that id exists (an idempotent replay). Of
        concurrent creates of one id exactly one gets True."""
        ...

    def create_jobs(self, jobs: list[JobRecord]) -> None:
        """Store new jobs whose ids are fresh (random): unconditional puts, any number (the
        adapter batches them). An existing id is overwritten, so never pass one."""
        ...

    def get_job(self, job_id: str) -> JobRecord | None:
        """The job as last committed, or None when there is no such id."""
        ...

    def get_jobs(self, job_ids: list[str]) -> dict[str, JobRecord]:
        """id -> record of the jobs among ``job_ids`` that exist (strongly consistent, as
        ``get_job``; any number of ids, repeats allowed; the adapter pages the reads)."""
        ...

    def atomic(self) -> AbstractContextManager[None]:
        """A unit of work over the job, queue and idempotency stores, for this thread.

        Where the backend has multi-item transactions (the embedded SQLite store) every write
        made through these stores inside the block commits together, or not at all when the
        block raises; reads inside see the block's own writes. Where it has none (DynamoDB)
        each call commits on its own, in order, and nothing is undone. Callers order their
        writes so that every prefix is safe in both cases (see ``services/queue_ops.py``),
        and write nothing else inside the block (hooks run after it). Blocks may nest.
        """
        ...

    def job_statuses(self, job_ids: list[str]) -> dict[str, str]:
        """id -> status of the jobs among ``job_ids`` that exist (strongly consistent; any
        number of ids, repeats allowed)."""
        ...

    def list_jobs(
        self,
        tenant: str | None,
        status: str | None,
        model: str | None,
        limit: int,
        cursor: str | None,
    ) -> tuple[list[JobRecord], str | None]:
        """One page of jobs and the cursor of the next page (None: the listing is done).

        ``tenant``: that tenant's jobs; None: every tenant's jobs. Newest first either way
        (``created_at`` in ms, then id, both descending), each exactly once over the pages.
        ``status`` / ``model`` filter (None or "": no filter). ``limit`` >= 1: at most that
        many jobs. The adapter reads as many backend pages as it takes to fill the page; it
        may stop after a bounded amount of reading (DynamoDB: 10 requests, 20 for every
        tenant's) and return a short (even empty) page with
        a cursor, but never a short page without one unless the listing is done.
        ``cursor``: opaque, from the previous page of the same listing (same tenant);
        ``InvalidRequest`` when it is not one, or belongs to another tenant's listing.
        May lag writes by a moment (DynamoDB: index Queries, eventually consistent).
        """
        ...

    def max_inline_outputs(self, job: JobRecord) -> int:
        """How many bytes of outputs JSON ``finish_running(outputs_json=…)`` can store inline
        for ``job`` next to its request (DynamoDB: what still fits the 400 KB item; SQLite: a
        few MB). Larger results go to the bucket (``outputs_ref``). Pure; no I/O."""
        ...

    def claim_job(
        self,
        job_id: str,
        queue_token: str,
        *,
        lease_token: str,
        runner_id: str,
        version: str,
        now: float,
        lease_expires_at: float,
        lease_key: tuple[str, str],
    ) -> JobRecord | None:
        """QUEUED -> RUNNING iff the job is QUEUED under ``queue_token``: sets the lease
        (token, runner, expiry, marker key), ``model_version = version``,
        ``started_at = now``, ``attempts + 1``; clears the queue token and key. None when
        the job is missing, not QUEUED or queued under another token (someone else won)."""
        ...

    def claim_jobs(
        self, claims: list[JobClaim], *, runner_id: str, now: float
    ) -> list[JobRecord | None]:
        """``claim_job`` for each claim, in order, each conditional on its own queue token:
        the answer at position i is claim i's (its record as committed, or None when its
        condition failed). One claim's lost condition never affects another's. A job named
        twice: the later claims see the earlier ones' writes (so at most one wins). Inside
        ``atomic`` on SQLite the batch is one statement per chunk; DynamoDB: one conditional
        write per claim."""
        ...

    def extend_lease(
        self,
        job_id: str,
        lease_token: str,
        runner_id: str,
        lease_expires_at: float,
        lease_key: tuple[str, str],
    ) -> JobRecord | None:
        """Move a lease's expiry and marker key iff the job is RUNNING under ``lease_token``
        held by ``runner_id`` (expired or not); None otherwise."""
        ...

    def finish_running(
        self,
        job_id: str,
        lease_token: str,
        status: str,
        *,
        now: float,
        outputs_json: str | None = None,
        outputs_ref: str | None = None,
        error: dict[str, Any] | None = None,
        run_ms: int | None = None,
        expired_before: float | None = None,
        run_info: dict[str, Any] | None = None,
    ) -> JobRecord | None:
        """RUNNING -> ``status`` iff the job is RUNNING under ``lease_token`` (and, with
        ``expired_before``, iff ``lease_expires_at <= expired_before``: the sweep's check).
        Sets ``finished_at = now`` and each result field given (None: left unset); clears
        the lease marker key, keeps the lease token and runner. ``outputs_json`` is JSON
        text of at most ``max_inline_outputs(job)`` bytes, read back parsed as ``outputs``.
        None when the condition fails: exactly once per lease token."""
        ...

    def finish_running_jobs(
        self, finishes: list[JobFinish], *, now: float
    ) -> list[JobRecord | None]:
        """``finish_running`` (without ``expired_before``) for each finish, in order, each
        fenced by its own lease token: the answer at position i is finish i's (its record as
        committed, or None when its token is no longer the job's RUNNING lease). A stale
        token refuses that job only. A job named twice: at most one finish wins (exactly
        once per lease token)."""
        ...

    def requeue_running(
        self,
        job_id: str,
        lease_token: str,
        queue_key: tuple[str, str],
        queue_token: str,
        *,
        expired_before: float,
    ) -> bool:
        """RUNNING -> QUEUED iff the job is RUNNING under ``lease_token`` and
        ``lease_expires_at <= expired_before``: stores the new queue key and token, clears
        the lease token, marker key, expiry and runner (``attempts`` is kept). False
        otherwise. The caller writes the queue entry first."""
        ...

    def finish_queued(
        self,
        job_id: str,
        queue_token: str,
        status: str,
        *,
        now: float,
        error: dict[str, Any] | None = None,
    ) -> JobRecord | None:
        """QUEUED -> ``status`` (CANCELLED | TIMED_OUT) iff the job is QUEUED under
        ``queue_token``: sets ``finished_at = now`` and ``error`` (if given), clears the
        queue token and key. None otherwise."""
        ...

    def ping(self) -> None:
        """Return when the job table can be read; ``Unavailable`` otherwise."""
        ...


class QueueKeys(Protocol):
    """How one queue store names shards, entries and markers (``QueueStore.keys``).

    Services choose the numbers (which queue shard, which marker shard) and the values; the
    store owns the formats. Every method is pure (no I/O) and total on its inputs; the keys it
    returns are opaque strings to pass back unchanged.
    """

    def queue_shard(self, model: str, n: int) -> str:
        """The key of queue shard ``n`` of ``model`` (what ``QueueStore.head`` reads)."""
        ...

    def shard_number(self, shard: str) -> int:
        """``n`` of a queue shard key made by ``queue_shard(model, n)`` (e.g. from a job's
        ``queue_key``)."""
        ...

    def entry(
        self,
        *,
        model: str,
        shard_number: int,
        job_id: str,
        priority: int,
        created_at: float,
        version: str,
        region: str,
        ttl_deadline: float,
        token: str,
        timeout_s: int,
        tenant: str = "",
    ) -> QueueEntry:
        """The queue entry of a job in queue shard ``shard_number`` of ``model``; its ``sk``
        orders it by ``priority`` (0..100, higher first), then ``created_at`` (ms), then
        ``job_id``. The same job always gets the same ``sk``."""
        ...

    def lease_shard(self, n: int) -> str:
        """The key of lease-marker shard ``n`` (what ``QueueStore.due_markers`` reads)."""
        ...

    def ttl_shard(self, n: int) -> str:
        """The key of queue-TTL-marker shard ``n``."""
        ...

    def lease_marker(self, n: int, job_id: str, expires_at: float, token: str) -> Marker:
        """The marker in lease shard ``n`` that is due once ``expires_at`` (ms) has passed."""
        ...

    def ttl_marker(self, n: int, job_id: str, deadline: float) -> Marker:
        """The marker in TTL shard ``n`` that is due once ``deadline`` (ms) has passed."""
        ...

    def due_bound(self, now: float) -> str:
        """The bound for ``QueueStore.due_markers`` at ``now``: a marker is due when its
        instant, in whole ms, is before ``now`` in whole ms (an instant equal to ``now`` is
        not due yet)."""
        ...


class QueueStore(Protocol):
    """Queue entries, lease-expiry and TTL markers, per-model depth counters.

    Entries are keyed by ``(shard, sk)``, markers by ``(shard, sk)`` in their own key space;
    both only from ``keys``. Writes join an open ``JobRecordStore.atomic()`` unit of work.
    """

    @property
    def keys(self) -> QueueKeys:
        """The key formats of this store."""
        ...

    def enqueue(self, entry: QueueEntry) -> bool:
        """Write ``entry`` iff its key is free or holds the same token (a retry of the same
        enqueue, which rewrites it); False, writing nothing, when the key holds another
        token (someone else's enqueue). Of concurrent enqueues of one key with different
        tokens exactly one gets True."""
        ...

    def enqueue_many(self, entries: list[QueueEntry]) -> None:
        """Unconditional puts of entries with fresh keys, any number (batched)."""
        ...

    def head(self, shard: str, limit: int, after_sk: str | None = None) -> list[QueueEntry]:
        """Up to ``limit`` entries of ``shard`` in ascending ``sk`` (claim order), strictly
        after ``after_sk`` when given. Other shards are never included."""
        ...

    def remove_entry(self, shard: str, sk: str, token: str) -> None:
        """Delete the entry iff it still carries ``token`` (never someone else's newer
        entry); absent or re-tokened entries are left alone, silently."""
        ...

    def put_marker(self, marker: Marker) -> None:
        """Unconditional put (replaces a marker with the same key, token included)."""
        ...

    def put_markers(self, markers: list[Marker]) -> None:
        """Unconditional puts, any number (batched)."""
        ...

    def delete_marker(self, shard: str, sk: str) -> None:
        """Unconditional delete; an absent marker is fine."""
        ...

    def delete_markers(self, keys: list[tuple[str, str]]) -> None:
        """Unconditional deletes of the markers ``(shard, sk)`` (absent ones and repeats are
        fine), batched by the adapter."""
        ...

    def due_markers(
        self, shard: str, before_sk: str, limit: int, after_sk: str | None = None
    ) -> list[Marker]:
        """Up to ``limit`` markers of ``shard`` due before the bound ``before_sk``
        (``keys.due_bound(now)``), oldest first (ascending ``sk``), strictly after
        ``after_sk`` when given. Markers never expire on their own: they stay until
        deleted."""
        ...

    def add_depth(self, model: str, shard: int, delta: int) -> None:
        """Atomically add ``delta`` to the depth counter of queue shard ``shard`` of
        ``model`` (0: no write). Concurrent adds never lose an update."""
        ...

    def depth(self, model: str) -> int:
        """Queued jobs of ``model``: the sum of its shard counters, never below 0 (a counter
        may dip below zero for a moment); 0 for an unknown model."""
        ...

    def all_depths(self) -> dict[str, int]:
        """model -> depth (as ``depth``) for every model that has a counter, sorted by
        model; may lag the counters by a moment (DynamoDB: an eventually consistent Scan)."""
        ...

    def ping(self) -> None:
        """Return when the queue and marker tables can be read; ``Unavailable`` otherwise."""
        ...


class IdempotencyStore(Protocol):
    """``Idempotency-Key`` records (24 h).

    A record lives until its ``expires_at`` (inclusive). Expired records are deleted by the
    backend some time later (DynamoDB TTL; SQLite: a few per claim) or replaced by a claim.
    """

    def claim_key(self, rec: IdempotencyRecord, now: float) -> IdempotencyRecord | None:
        """Bind ``rec.key`` to ``rec`` iff the key is unbound or its record expired
        (``expires_at < now``): None when bound now; else the live record holding the key,
        unchanged. Of concurrent claims of one key exactly one gets None and every other
        gets the winner's record."""
        ...

    def find_key(self, key: str, now: float) -> IdempotencyRecord | None:
        """The live record holding ``key`` (None: unbound or expired); a consistent read."""
        ...


class ModelStore(Protocol):
    """Model ownership and versions. Versions are decimal integer strings and are keyed by
    their number (``"1"`` and ``"01"`` are the same version)."""

    def claim_name(self, name: str, tenant: str, now: float) -> str:
        """Make ``tenant`` the owner of ``name`` when it has none (or refresh the claim when
        ``tenant`` owns it already); returns the owner. Another tenant's earlier claim wins:
        of concurrent first claims, one tenant owns the name and everyone gets it back."""
        ...

    def owner(self, name: str) -> str | None:
        """The owning tenant of ``name``, or None when it was never claimed."""
        ...

    def release_name(self, name: str, tenant: str) -> bool:
        """Drop the claim of ``tenant`` on ``name`` iff it owns it and ``name`` holds no
        version (the service checked; a version created between that check and this call
        is seen by the SQLite store, which then keeps the claim and answers False, and may
        be missed by DynamoDB, whose version items then need their name claimed again);
        False when nothing was released."""
        ...

    def put_version(self, rec: ModelVersionRecord) -> bool:
        """Store a new version; False, writing nothing, when that version exists."""
        ...

    def get_version(self, name: str, version: str) -> ModelVersionRecord | None:
        """One version as stored, or None."""
        ...

    def list_versions(self, name: str) -> list[ModelVersionRecord]:
        """Every version of ``name``, newest (highest number) first."""
        ...

    def mark_ready(self, rec: ModelVersionRecord) -> bool:
        """UPLOADING -> READY iff the version is UPLOADING, storing the parsed config
        (``platform``, ``backend`` (None stored as ""), ``max_batch_size``, ``inputs``,
        ``outputs``, ``config``); False when the version is missing or not UPLOADING."""
        ...

    def delete_version(self, name: str, version: str) -> bool:
        """Remove a version in any state; False when it does not exist."""
        ...

    def list_names(self) -> list[tuple[str, str]]:
        """(name, owning tenant) of every claimed name, sorted; may lag a claim by a moment
        (DynamoDB: an eventually consistent Scan)."""
        ...


@dataclass(frozen=True)
class PlanRecord:
    """The stored placement decision: a JSON document, fenced by ``revision``."""

    revision: int
    planned_at: float
    doc: dict[str, Any]


class DeploymentStore(Protocol):
    """Deployment specs per model and the one placement decision of the fleet."""

    def put_deployment(self, name: str, spec: dict[str, Any], now: float) -> None:
        """Store (replace) the deployment spec of ``name``; the last write wins."""
        ...

    def get_deployment(self, name: str) -> dict[str, Any] | None:
        """The spec of ``name``, or None."""
        ...

    def list_deployments(self) -> dict[str, dict[str, Any]]:
        """name -> spec of every deployment."""
        ...

    def get_plan(self) -> PlanRecord | None:
        """The stored decision, or None before the first ``save_plan``."""
        ...

    def save_plan(self, doc: dict[str, Any], planned_at: float, expected_revision: int) -> bool:
        """Store the decision as revision ``expected_revision + 1`` iff the stored revision is
        ``expected_revision`` (0: no plan stored yet); False when another writer got there
        first. Of concurrent saves on one revision exactly one gets True."""
        ...


@dataclass(frozen=True)
class JobServiceStores:
    """The three stores behind the job service: ``jobs`` (the job records,
    ``JobRecordStore``), ``queue`` (the queue indexes, ``QueueStore``) and ``idempotency``
    (``IdempotencyStore``). Not a store of its own: a bundle (see ``JobRecordStore``)."""

    jobs: JobRecordStore
    queue: QueueStore
    idempotency: IdempotencyStore

    def atomic(self) -> AbstractContextManager[None]:
        """A unit of work over the three stores (see ``JobRecordStore.atomic``)."""
        return self.jobs.atomic()


class BlobStore(Protocol):
    """The bucket: presigned uploads/downloads, hashes, JSON documents.

    Keys are ``/``-separated paths without empty, ``.`` or ``..`` segments (the local store
    refuses others with ``InvalidRequest``; S3 accepts more). Objects are replaced whole: a
    reader sees the old bytes or the new ones, never a mix; the last write of a key wins.
    Nothing here expires on its own (lifecycle rules are the deployment's: S3 rules, the
    local store's ``sweep``). Presigned URLs work without extra headers until ``ttl_s``
    seconds from now; their form is the store's.
    """

    def presign_put(self, key: str, ttl_s: int) -> str:
        """A URL that PUTs one object at ``key`` (no extra headers needed)."""
        ...

    def presign_get(self, key: str, ttl_s: int) -> str:
        """A URL that GETs the object at ``key`` (``Range`` supported)."""
        ...

    def head(self, key: str) -> int | None:
        """The object's size in bytes, or None when it does not exist."""
        ...

    def sha256_of(self, key: str) -> str | None:
        """sha256 (hex) of the object's bytes, computed from the bytes (streamed), or None
        when it does not exist."""
        ...

    def put_json(self, key: str, doc: Any) -> None:
        """Store ``doc`` as compact JSON at ``key`` (replacing any object there)."""
        ...

    def get_json(self, key: str) -> Any:
        """The JSON document at ``key``; ``NotFound`` when missing."""
        ...

    def get_bytes(self, key: str, limit: int = ...) -> bytes:
        """The first ``limit`` bytes (default 16 MiB) of the object; ``NotFound`` when
        missing."""
        ...

    def create_multipart(self, key: str) -> str:
        """Start a multipart upload of ``key``; its opaque id. Nothing is visible at ``key``
        until ``complete_multipart``."""
        ...

    def presign_upload_part(self, key: str, upload_id: str, number: int, ttl_s: int) -> str:
        """A URL that PUTs part ``number`` (1..10000) of the upload; the response's ``ETag``
        is what ``complete_multipart`` expects."""
        ...

    def complete_multipart(self, key: str, upload_id: str, etags: list[str]) -> None:
        """Assemble parts 1..n (``etags`` in part order) into the object at ``key``.
        ``NotFound`` when the upload is unknown (or completed), a part is missing or an ETag
        does not match its part; the object is then not written."""
        ...

    def copy_to(self, key: str, location: str) -> None:
        """Copy object ``key`` to the same key at ``location``: another bucket or S3 access
        point (the local store: its prefix ``regions/<location>/``), for runners of a region
        to fetch model files near them (docs/regions.md). The copy is whole or absent, as a
        put; copying again replaces it. NotFound when ``key`` does not exist."""
        ...

    def presign_get_at(self, location: str, key: str, ttl_s: int) -> str:
        """A URL that GETs the copy of ``key`` at ``location`` (made by ``copy_to``)."""
        ...

    def delete_prefix_at(self, location: str, prefix: str) -> None:
        """Delete every copy under ``prefix`` at ``location`` (as ``delete_prefix``)."""
        ...

    def delete_prefix(self, prefix: str) -> None:
        """Delete every object whose key starts with ``prefix`` (a plain string prefix:
        ``"d/a"`` also matches ``"d/ab/1"``); nothing there is fine."""
        ...

    def ping(self) -> None:
        """Return when the bucket can be used; ``Unavailable`` otherwise."""
        ...
