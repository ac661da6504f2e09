"""Large tensors through the bucket: presigned uploads of job inputs, the runner's presigned
GETs of them and its presigned PUT of large outputs.

Keys::

    payloads/<tenant>/<ref>              raw input tensor bytes (``ref`` = ``pl_<32 hex>``)
    results/<job_id>/<tag>/outputs.bin   outputs a runner uploaded (``tag`` from the lease token)

The control plane only signs URLs and reads object sizes: no payload byte passes through it.
A ``data_ref`` resolves only inside the tenant that uploaded it.
"""

from __future__ import annotations

import hashlib
import math
import re
import secrets

from gpufleet.wire import LeasedJob, PayloadUpload, PayloadUploadRequest, ResultUpload, Tensor

from control_plane.errors import InvalidRequest
from control_plane.services.principal import Principal
from control_plane.settings import Settings
from control_plane.storage.definitions import PAYLOADS_PREFIX, RESULTS_PREFIX
from control_plane.storage.protocols import BlobStore, JobRecord

REF_PATTERN = re.compile(r"^pl_[0-9a-f]{32}$")
MAX_PRESIGN_S = 7 * 86_400  # SigV4 presigned URLs live at most 7 days
ITEM_SIZES = {
    "BOOL": 1,
    "UINT8": 1,
    "INT8": 1,
    "UINT16": 2,
    "INT16": 2,
    "FP16": 2,
    "UINT32": 4,
    "INT32": 4,
    "FP32": 4,
    "UINT64": 8,
    "INT64": 8,
    "FP64": 8,
}


def payload_key(tenant: str, ref: str) -> str:
    return f"{PAYLOADS_PREFIX}{tenant}/{ref}"


def result_key(job_id: str, lease_token: str) -> str:
    """The one key a runner holding ``lease_token`` may complete ``job_id`` with."""
    tag = hashlib.sha256(lease_token.encode()).hexdigest()[:16]
    return f"{RESULTS_PREFIX}{job_id}/{tag}/outputs.bin"


def size_problem(tensor: Tensor, size: int) -> str | None:
    """None when ``size`` bytes can hold ``tensor`` (datatype x shape), else why not."""
    count = math.prod(tensor.shape)
    if tensor.datatype == "BYTES":  # 4-byte length prefix per element
        return None if size >= 4 * count else f"{size} bytes cannot hold {count} BYTES elements"
    want = count * ITEM_SIZES[tensor.datatype]
    return (
        None
        if size == want
        else f"payload is {size} bytes, {tensor.datatype}{tensor.shape} needs {want}"
    )


class PayloadService:
    """Presigned URLs for payloads and results; no state of its own."""

    def __init__(self, settings: Settings, blobs: BlobStore) -> None:
        self._settings = settings
        self._blobs = blobs

    def create(self, p: Principal, req: PayloadUploadRequest) -> PayloadUpload:
        """A fresh ``data_ref`` and the presigned PUT that uploads its bytes."""
        p.require("jobs:write")
        ref = f"pl_{secrets.token_hex(16)}"
        url = self._blobs.presign_put(payload_key(p.tenant, ref), self._settings.presign_ttl_s)
        return PayloadUpload(ref=ref, url=url)

    def check_input(self, tenant: str, index: int, tensor: Tensor) -> None:
        """InvalidRequest unless ``tensor.data_ref`` names an uploaded payload of the
        tenant whose size fits the tensor's datatype and shape."""
        ref = tensor.data_ref or ""
        where = f"inputs[{index}].data_ref"
        size = self._blobs.head(payload_key(tenant, ref)) if REF_PATTERN.fullmatch(ref) else None
        if size is None:
            raise InvalidRequest(
                f"input {tensor.name!r}: data_ref {ref!r} names no uploaded payload "
                "(POST /v1/payloads, then PUT the bytes to its url)",
                field=where,
            )
        why = size_problem(tensor, size)
        if why:
            raise InvalidRequest(f"input {tensor.name!r}: {why}", field=where)

    def _ttl(self, job: JobRecord) -> int:
        """Long enough for the whole attempt (its timeout plus a lease), at most 7 days."""
        span = job.timeout_s + self._settings.lease_duration_s + self._settings.presign_ttl_s
        return int(min(MAX_PRESIGN_S, span))

    def for_lease(self, job: JobRecord, leased: LeasedJob) -> LeasedJob:
        """``leased`` with presigned GETs of its ``data_ref`` inputs and the PUT for its
        outputs (signing is local: no call to the bucket)."""
        urls, upload = self.lease_urls(job, leased.lease_token, leased.inputs)
        return leased.model_copy(update={"input_urls": urls, "outputs_upload": upload})

    def lease_urls(
        self, job: JobRecord, lease_token: str, inputs: list[Tensor]
    ) -> tuple[dict[str, str], ResultUpload]:
        """The presigned GETs of ``inputs``' ``data_ref`` payloads by tensor name, and the
        PUT for the outputs of the lease ``lease_token`` of ``job`` (``for_lease``'s URLs,
        for a leased job built with them: ``job_views.leased_job``)."""
        ttl = self._ttl(job)
        urls = {
            t.name: self._blobs.presign_get(payload_key(job.tenant, t.data_ref), ttl)
            for t in inputs
            if t.data_ref is not None
        }
        key = result_key(job.id, lease_token)
        # (validated: for a model with defaults pydantic's model_construct, a Python loop
        # over the fields, costs ~3x the validation in Rust)
        upload = ResultUpload(
            ref=key,
            url=self._blobs.presign_put(key, ttl),
            method="PUT",
            headers={},
            max_inline_bytes=int(self._settings.max_inline_bytes),
        )
        return urls, upload

    def check_result(self, job_id: str, lease_token: str, ref: str) -> str:
        """``ref`` if it is this lease's result key and the object is there."""
        want = result_key(job_id, lease_token)
        if ref != want:
            raise InvalidRequest(
                f"outputs_ref must be the outputs_upload.ref of this lease ({want})",
                field="outputs_ref",
            )
        if self._blobs.head(ref) is None:
            raise InvalidRequest(f"outputs_ref {ref!r}: nothing was uploaded", field="outputs_ref")
        return ref
