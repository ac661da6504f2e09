"""``job_view`` builds the wire view without validating it again (``model_construct``): the
JSON it answers is exactly what a validated ``JobView`` answers, with no serializer warning
(every field of its declared type), for records of every kind."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import pytest
from gpufleet.wire import JobView

from control_plane.services.job_views import job_view
from control_plane.storage.local_blobs import LocalBlobStore
from control_plane.storage.protocols import JobRecord


def _record(**fields: Any) -> JobRecord:
    base: dict[str, Any] = {
        "id": "job_1",
        "tenant": "acme",
        "model": "add_sub",
        "model_version": "1",
        "pinned": False,
        "status": "QUEUED",
        "priority": 0,
        "created_at": 1_700_000_000.123456,
        "timeout_s": 60,
        "ttl_s": 3600,
        "max_attempts": 3,
        "region": None,
        "request": {"inputs": [], "tags": {}, "placement": {"regions_allowed": []}},
    }
    return JobRecord(**{**base, **fields})


RECORDS = [
    _record(),
    _record(
        status="RUNNING",
        attempts=1,
        started_at=1_700_000_000.5,
        runner_id="run_1",
        region="eu",
        request={
            "tags": {"team": "a"},
            "placement": {"regions_allowed": ["eu", "us"], "spill_after_s": 5},
        },
    ),
    _record(
        status="SUCCEEDED",
        attempts=1,
        priority=7,
        started_at=1_700_000_000.5,
        finished_at=1_700_000_001.25,
        run_ms=3,
        outputs=[
            {"name": "OUTPUT0", "datatype": "FP32", "shape": [1, 4], "data": [1.0, 2, 3, 4]},
            {"name": "OUT_B", "datatype": "BYTES", "shape": [1], "data": ["x"], "parameters": {}},
        ],
        run_info={"runner_ms": 2, "cold_start": True, "load_ms": 120, "logs": "hi"},
        request={"placement": {"spill_after_s": 2.5}},
    ),
    _record(
        status="FAILED",
        attempts=3,
        finished_at=1_700_000_002.0,
        error={"code": "triton_error", "message": "boom", "details": [{"a": 1}]},
    ),
    _record(status="SUCCEEDED", outputs_ref="results/job_1/abc/outputs.json", run_ms=1),
]


@pytest.mark.parametrize("job", RECORDS)
def test_constructed_view_answers_what_a_validated_one_does(job: JobRecord, tmp_path: Path) -> None:
    blobs = LocalBlobStore(tmp_path / "blobs", "http://127.0.0.1:1", b"k" * 32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a field of another type warns when serialized
        view = job_view(job, blobs, 60)
        text = view.model_dump_json()
        assert view.model_dump_json(exclude_none=True)
    validated = JobView.model_validate(view.model_dump())
    assert validated.model_dump_json() == text
    assert JobView.model_validate_json(text) == validated
