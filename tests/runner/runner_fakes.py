"""Fakes for the runner's unit tests: a control plane (real class behind
httpx.MockTransport that checks signatures) and a Triton engine (a real InferenceEngine)."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any

import httpx
import pynvml
from gpufleet import signing
from gpufleet.wire import OutputRequest, Tensor

from runner.backends.base import InferError

BASE = "http://cp.test"


class FakeControlPlane:
    """Just enough of api-v1's runner routes: register, lease, extend, complete, batch
    complete (``batch_route = False``: a control plane without it, answering 404)."""

    def __init__(self, jobs: list[dict[str, Any]] | None = None) -> None:
        self.queue = list(jobs or [])
        self.secrets = {"run_old": "old-secret"}
        self.revoked: set[str] = set()
        self.registered: list[str] = []
        self.leases: list[dict[str, Any]] = []
        self.completed: dict[str, dict[str, Any]] = {}
        self.extended: list[str] = []
        self.conflict_on_complete: set[str] = set()
        self.conflict_on_extend: set[str] = set()  # the lease was lost (re-leased elsewhere)
        self.batch_route = True
        self.batches: list[list[str]] = []  # job ids of each batch complete
        self.heartbeats: list[dict[str, Any]] = []
        self.cancelled: set[str] = set()
        self.config: dict[str, Any] = {"lease_wait_s": 0.0}
        self.chunks: list[dict[str, Any]] = []  # bodies of chunk appends (streamed jobs)
        self.chunk_calls_at: list[float] = []  # when each arrived (loop time)
        self.conflict_on_chunks: set[str] = set()
        self.chunks_route = True

    def __call__(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        body = json.loads(request.content or b"{}")
        if path == "/v1/runners/register":
            if body["join_token"] != "join-token-ok":
                return _error(401, "unauthorized")
            rid = f"run_{len(self.registered) + 1}"
            self.secrets[rid] = f"secret-{rid}"
            self.registered.append(rid)
            return httpx.Response(
                201, json={"api_version": "v1", "runner_id": rid, "secret": self.secrets[rid]}
            )
        rid = request.headers.get(signing.HEADER_RUNNER, "")
        expected = signing.compute_signature(
            self.secrets.get(rid, "?"),
            request.method,
            path,
            "",
            request.headers[signing.HEADER_TIMESTAMP],
            request.headers[signing.HEADER_NONCE],
            request.content,
        )
        if rid not in self.secrets:  # as the control plane says it (a store that was reset)
            return _error(
                401,
                "unauthorized",
                f"credentials refused: runner {rid} is unknown to this control plane; "
                "re-register with a new join token",
            )
        if rid in self.revoked or not signing.signature_matches(
            expected, request.headers[signing.HEADER_SIGNATURE]
        ):
            return _error(401, "unauthorized")
        if path.endswith("/heartbeat"):
            self.heartbeats.append(body)
            cancel = [j for j in body.get("running_jobs", []) if j in self.cancelled]
            return httpx.Response(
                200, json={"api_version": "v1", "config": self.config, "cancel_jobs": cancel}
            )
        if path.endswith("/lease"):
            self.leases.append(body)
            jobs, self.queue = self.queue[: body["max_jobs"]], self.queue[body["max_jobs"] :]
            return httpx.Response(200, json={"api_version": "v1", "jobs": jobs})
        if path == f"/v1/runners/{rid}/complete":
            return self._complete_batch(body)
        if path == f"/v1/runners/{rid}/chunks":
            if not self.chunks_route:
                return _error(404, "not_found")
            if body["job_id"] in self.conflict_on_chunks:
                return _error(409, "conflict")
            self.chunks.append(body)
            return httpx.Response(200, json={"api_version": "v1", "stored": len(body["chunks"])})
        job_id = path.split("/")[-2]
        if path.endswith("/extend"):
            self.extended.append(job_id)
            if job_id in self.conflict_on_extend:
                return _error(409, "conflict")
            return httpx.Response(
                200, json={"api_version": "v1", "lease_expires_at": "2999-01-01T00:00:00Z"}
            )
        if path.endswith("/complete"):
            if job_id in self.conflict_on_complete:
                return _error(409, "conflict")
            self.completed[job_id] = body
            return httpx.Response(
                200, json={"api_version": "v1", "id": job_id, "status": body["status"]}
            )
        return _error(404, "not_found")

    def _complete_batch(self, body: dict[str, Any]) -> httpx.Response:
        if not self.batch_route:
            return _error(404, "not_found")
        self.batches.append([r["job_id"] for r in body["results"]])
        answers = []
        for result in body["results"]:
            job_id = result.pop("job_id")
            if job_id in self.conflict_on_complete:
                error = {"code": "conflict", "message": "stale lease token"}
                answers.append({"job_id": job_id, "status": "conflict", "error": error})
            else:
                self.completed[job_id] = result
                answers.append({"job_id": job_id, "status": "committed"})
        return httpx.Response(200, json={"api_version": "v1", "results": answers})


def _error(status: int, code: str, message: str | None = None) -> httpx.Response:
    return httpx.Response(
        status, json={"api_version": "v1", "error": {"code": code, "message": message or code}}
    )


def job(
    job_id: str, *, timeout_s: int = 30, expires: str = "2999-01-01T00:00:00Z"
) -> dict[str, Any]:
    return {
        "id": job_id,
        "lease_token": f"tok-{job_id}",
        "lease_expires_at": expires,
        "model": "add_sub",
        "model_version": "1",
        "inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [1, 2], "data": [1, 2]}],
        "timeout_s": timeout_s,
        "attempt": 1,
    }


class FakeEngine:
    """Echoes INPUT0 doubled; per-job behaviour by job input value."""

    def __init__(self) -> None:
        self.delay = 0.05
        self.active = 0
        self.max_active = 0
        self.calls = 0
        self.transient_failures = 0
        self.error: str | None = None

    async def server_ready(self) -> bool:
        return True

    async def load_model(self, name: str, config: str | None = None) -> None: ...

    async def unload_model(self, name: str) -> None: ...

    async def model_ready(self, name: str, version: str) -> bool:
        return True

    async def infer(
        self,
        model: str,
        version: str,
        inputs: list[Tensor],
        outputs: list[OutputRequest] | None,
        parameters: dict[str, Any],
        timeout_s: float,
    ) -> list[Tensor]:
        self.calls += 1
        if self.transient_failures > 0:
            self.transient_failures -= 1
            raise InferError("StatusCode.UNAVAILABLE: Connection refused", transient=True)
        if self.error:
            raise InferError(self.error)
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        try:
            await asyncio.sleep(self.delay)
        finally:
            self.active -= 1
        data = [2 * x for x in inputs[0].data or []]
        return [Tensor(name="OUTPUT0", datatype="FP32", shape=inputs[0].shape, data=data)]

    async def metrics(self) -> dict[str, Any]:
        return {}

    async def aclose(self) -> None: ...


@dataclass
class _Memory:
    total: int
    free: int
    used: int


@dataclass
class _Utilization:
    gpu: int
    memory: int


class FakeNvml:
    """pynvml's calls over two fake GPUs (names as bytes, like older pynvml returns)."""

    NVMLError = pynvml.NVMLError

    def __init__(self, *, power_supported: bool = True) -> None:
        self.initialised = 0
        self.shutdowns = 0
        self._power = power_supported
        self._gpus = [
            {
                "name": b"NVIDIA A100-SXM4-80GB",
                "uuid": "GPU-1111",
                "mem": (81920, 1024),
                "util": 37,
                "temp": 41,
                "mw": 71234,
            },
            {
                "name": "NVIDIA L4",
                "uuid": b"GPU-2222",
                "mem": (23034, 0),
                "util": 0,
                "temp": 30,
                "mw": 16000,
            },
        ]

    def nvmlInit(self) -> None:
        self.initialised += 1

    def nvmlShutdown(self) -> None:
        self.shutdowns += 1

    def _check(self) -> None:
        if not self.initialised:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_UNINITIALIZED)

    def nvmlDeviceGetCount(self) -> int:
        self._check()
        return len(self._gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> Any:
        self._check()
        return self._gpus[index]

    def nvmlDeviceGetName(self, handle: Any) -> Any:
        return handle["name"]

    def nvmlDeviceGetUUID(self, handle: Any) -> Any:
        return handle["uuid"]

    def nvmlDeviceGetMemoryInfo(self, handle: Any) -> _Memory:
        total, used = handle["mem"]
        return _Memory(total * 2**20, (total - used) * 2**20, used * 2**20)

    def nvmlDeviceGetUtilizationRates(self, handle: Any) -> _Utilization:
        return _Utilization(handle["util"], 5)

    def nvmlDeviceGetTemperature(self, handle: Any, sensor: int) -> int:
        assert sensor == pynvml.NVML_TEMPERATURE_GPU
        return int(handle["temp"])

    def nvmlDeviceGetPowerUsage(self, handle: Any) -> int:
        if not self._power:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)
        return int(handle["mw"])
