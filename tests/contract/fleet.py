"""Helpers shared by the job/model tests: principals, the add_sub model pushed through real
presigned PUTs, job requests, a runner's lease/complete calls."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from gpufleet.wire import (
    CommitRequest,
    CompleteRequest,
    CreateVersionRequest,
    FileSpec,
    JobRequest,
    LeasedJob,
    LeaseRequest,
    ModelRef,
    Tensor,
)

from control_plane import clock
from control_plane.composition import build_job_service
from control_plane.services.jobs import JobService
from control_plane.services.models import ModelService
from control_plane.services.principal import ROLE_SCOPES, Principal

REPO = Path(__file__).resolve().parents[2]

# Triton's add_sub example (Python backend), used when model_repository/add_sub is absent.
ADD_SUB_CONFIG = """
name: "add_sub"
backend: "python"
max_batch_size: 8
input [
  { name: "INPUT0" data_type: TYPE_FP32 dims: [ 4 ] },
  { name: "INPUT1" data_type: TYPE_FP32 dims: [ 4 ] }
]
output [
  { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 4 ] },
  { name: "OUTPUT1" data_type: TYPE_FP32 dims: [ 4 ] }
]
"""
ADD_SUB_MODEL_PY = (
    b"class TritonPythonModel:\n    def execute(self, requests):\n        return []\n"
)


def principal(tenant: str = "acme", role: str = "user") -> Principal:
    return Principal(sub=f"{role}@{tenant}", tenant=tenant, role=role, scopes=ROLE_SCOPES[role])


def services(
    settings: Any, stores: Any, now: Callable[[], float] = clock.now
) -> tuple[JobService, ModelService]:
    """The job and model services on ``stores`` (a ``Stores``), with ``settings``, reading
    the time from ``now``."""
    return build_job_service(settings, stores, now)


def add_sub_files(name: str = "add_sub", salt: str = "") -> dict[str, bytes]:
    """config.pbtxt + 1/model.py of add_sub (from the repository when it is there); a
    ``salt`` comment makes the content differ (a new version instead of the same one)."""
    repo = REPO / "model_repository" / "add_sub"
    if (repo / "config.pbtxt").is_file() and (repo / "1" / "model.py").is_file():
        config = (repo / "config.pbtxt").read_bytes()
        model = (repo / "1" / "model.py").read_bytes()
    else:
        config, model = ADD_SUB_CONFIG.encode(), ADD_SUB_MODEL_PY
    if name != "add_sub":
        config = config.replace(b'name: "add_sub"', f'name: "{name}"'.encode())
    if salt:
        model += f"\n# {salt}\n".encode()
    return {"config.pbtxt": config, "1/model.py": model}


def file_specs(files: dict[str, bytes]) -> list[FileSpec]:
    return [
        FileSpec(path=p, size=len(b), sha256=hashlib.sha256(b).hexdigest())
        for p, b in files.items()
    ]


def push_model(
    models: ModelService,
    p: Principal,
    name: str = "add_sub",
    files: dict[str, bytes] | None = None,
    uploaded: dict[str, bytes] | None = None,
    version: str | None = None,
) -> Any:
    """Create a version, PUT each file to its presigned URL with httpx, commit."""
    files = files or add_sub_files(name)
    created = models.create_version(
        p, name, CreateVersionRequest(version=version, files=file_specs(files))
    )
    body = uploaded or files
    with httpx.Client(timeout=30) as http:
        for target in created.uploads:
            assert target.url is not None
            r = http.put(target.url, content=body[target.path], headers=target.headers)
            assert r.status_code == 200, r.text
    return models.commit(p, name, created.version, CommitRequest())


def job(
    model: str = "add_sub",
    priority: int = 0,
    batch: int = 1,
    **kw: Any,
) -> JobRequest:
    data = [float(i) for i in range(4 * batch)]
    return JobRequest(
        model=model,
        inputs=[
            Tensor(name="INPUT0", datatype="FP32", shape=[batch, 4], data=data),
            Tensor(name="INPUT1", datatype="FP32", shape=[batch, 4], data=data),
        ],
        priority=priority,
        **kw,
    )


def lease(
    jobs: JobService,
    runner: str = "run_1",
    max_jobs: int = 1,
    model: str = "add_sub",
    version: str = "1",
    region: str | None = None,
    wait_s: float = 0.0,
) -> list[LeasedJob]:
    req = LeaseRequest(
        models=[ModelRef(name=model, version=version)], max_jobs=max_jobs, wait_s=wait_s
    )
    return asyncio.run(jobs.lease(runner, region, req)).jobs


def succeed(jobs: JobService, leased: LeasedJob, runner: str = "run_1", **kw: Any) -> Any:
    outputs = kw.pop(
        "outputs", [Tensor(name="OUTPUT0", datatype="FP32", shape=[1, 4], data=[0, 2, 4, 6])]
    )
    return jobs.complete(
        runner,
        leased.id,
        CompleteRequest(lease_token=leased.lease_token, status="SUCCEEDED", outputs=outputs, **kw),
    )
