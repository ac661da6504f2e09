"""KServe answers inline: ``InferenceService.infer_inline`` reads outputs a job left in the
bucket through the blob store (a real local one here; the job service is a stand-in)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from gpufleet.tensors import encode_outputs
from gpufleet.wire import JobRequest, JobView

from control_plane.errors import Unavailable
from control_plane.services.inference import InferenceService
from control_plane.services.offload import Offload
from control_plane.services.principal import ROLE_SCOPES, Principal
from control_plane.settings import Settings
from control_plane.storage.local_blobs import LocalBlobStore

USER = Principal("u1", "acme", "user", ROLE_SCOPES["user"])
REF = "results/job_1/abc/outputs.bin"


class _Jobs:
    """Submit and wait answer one SUCCEEDED job whose outputs are in the bucket."""

    regions = None

    def __init__(self) -> None:
        self.offload = Offload(inline=True)
        self.asked: list[str] = []

    def submit(self, p: Principal, req: JobRequest, key: str | None) -> tuple[JobView, bool]:
        return self._view("QUEUED"), True

    async def wait(self, p: Principal, job_id: str, wait_s: float) -> JobView:
        return self._view("SUCCEEDED")

    def outputs_ref(self, p: Principal, job_id: str) -> str | None:
        self.asked.append(job_id)
        return REF

    @staticmethod
    def _view(status: str) -> JobView:
        return JobView.model_validate(
            {
                "id": "job_1",
                "status": status,
                "model": "add_sub",
                "model_version": "1",
                "priority": 0,
                "attempts": 1,
                "max_attempts": 3,
                "created_at": "2026-01-01T00:00:00Z",
                "outputs_url": "http://127.0.0.1:9/never-fetched"
                if status == "SUCCEEDED"
                else None,
            }
        )


@pytest.fixture
def blobs(tmp_path: Path) -> LocalBlobStore:
    return LocalBlobStore(tmp_path / "blobs", "", b"k" * 32)


def _service(blobs: LocalBlobStore) -> tuple[InferenceService, _Jobs]:
    jobs = _Jobs()
    return InferenceService(jobs, None, Settings(), blobs), jobs


def _request() -> JobRequest:
    return JobRequest.model_validate(
        {
            "model": "add_sub",
            "inputs": [{"name": "X", "datatype": "FP32", "shape": [1], "data": [1]}],
        }
    )


async def test_stored_outputs_come_back_inline_from_the_blob_store(blobs: LocalBlobStore) -> None:
    out = np.array([[1.5, 2.5]], dtype=np.float32)
    blobs.put_bytes(REF, encode_outputs([("OUT", "FP32", out)]))
    service, jobs = _service(blobs)
    res = await service.infer_inline(USER, _request())
    assert res.outputs_url is None and jobs.asked == ["job_1"]
    [t] = res.outputs
    assert (t.name, t.datatype, t.shape, t.data) == ("OUT", "FP32", [1, 2], [1.5, 2.5])


async def test_outputs_gone_or_truncated_are_unavailable(blobs: LocalBlobStore) -> None:
    service, _ = _service(blobs)
    with pytest.raises(Unavailable, match="could not read the outputs of job job_1"):
        await service.infer_inline(USER, _request())
    whole = encode_outputs([("OUT", "FP32", np.zeros(8, dtype=np.float32))])
    blobs.put_bytes(REF, whole[:-4])
    with pytest.raises(Unavailable, match="truncated"):
        await service.infer_inline(USER, _request())
