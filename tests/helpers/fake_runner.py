"""A fake runner for tests: speaks the real runner protocol (register with a join token,
HMAC-signed heartbeat / lease / complete over HTTP) and computes outputs in Python instead
of Triton. By default it serves ``add_sub`` (OUTPUT0 = INPUT0 + INPUT1, OUTPUT1 = INPUT0 -
INPUT1).

    with FakeRunner(url, join_token) as runner:   # a thread leasing until stopped
        ...
    runner.completed   # ids of the jobs it finished
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from typing import Any

import httpx
import numpy as np
from gpufleet import signing
from gpufleet.tensors import to_arrays, to_tensor
from gpufleet.wire import LeasedJob, LeaseResponse, RegisterResponse

Compute = Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]

GPU = {
    "index": 0,
    "uuid": "GPU-fake-0",
    "name": "Fake GPU",
    "memory_total_mb": 16000,
    "memory_used_mb": 1000,
}


def add_sub(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Triton's add_sub example."""
    a, b = inputs["INPUT0"], inputs["INPUT1"]
    return {"OUTPUT0": a + b, "OUTPUT1": a - b}


class JobError(Exception):
    """Raised by a compute function to fail the job with this code and message."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def complete_body(job: LeasedJob, compute: Compute) -> dict[str, Any]:
    """The ``complete`` body for ``job``: ``compute``'s outputs (those requested), or FAILED
    with the code of a ``JobError`` it raised."""
    done: dict[str, Any] = {"lease_token": job.lease_token}
    try:
        outputs = compute(to_arrays(job.inputs))
        wanted = {o.name for o in job.outputs} if job.outputs else set(outputs)
        done["status"] = "SUCCEEDED"
        done["outputs"] = [
            to_tensor(k, v).model_dump(mode="json", exclude_none=True)
            for k, v in outputs.items()
            if k in wanted
        ]
    except JobError as exc:
        done["status"] = "FAILED"
        done["error"] = {"code": exc.code, "message": str(exc)}
    return done


class FakeRunner:
    """Registers on construction; ``start()`` runs the lease loop in a daemon thread."""

    def __init__(
        self,
        url: str,
        join_token: str,
        *,
        models: list[tuple[str, str]] | None = None,
        compute: Compute = add_sub,
        name: str = "fake-runner",
        lease_wait_s: float = 1.0,
    ) -> None:
        self.url = url.rstrip("/")
        self.models = models or [("add_sub", "1")]
        self.compute = compute
        self.lease_wait_s = lease_wait_s
        self.completed: list[str] = []
        self.errors: list[BaseException] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._http = httpx.Client(base_url=self.url, timeout=30.0)
        body = {"join_token": join_token, "name": name, "gpus": [GPU]}
        resp = self._http.post("/v1/runners/register", json=body)
        resp.raise_for_status()
        reg = RegisterResponse.model_validate(resp.json())
        self.runner_id, self.secret = reg.runner_id, reg.secret

    def _post(self, path: str, body: dict[str, Any]) -> httpx.Response:
        raw = json.dumps(body).encode()
        headers = signing.sign_headers(self.runner_id, self.secret, "POST", path, body=raw)
        headers["Content-Type"] = "application/json"
        return self._http.post(path, content=raw, headers=headers)

    def heartbeat(self) -> None:
        models = [{"name": n, "version": v, "state": "READY"} for n, v in self.models]
        resp = self._post(
            f"/v1/runners/{self.runner_id}/heartbeat", {"gpus": [GPU], "models": models}
        )
        resp.raise_for_status()

    def run_once(self) -> int:
        """Lease (long poll) and finish the jobs received; returns how many."""
        body = {
            "models": [{"name": n, "version": v} for n, v in self.models],
            "max_jobs": 8,
            "wait_s": self.lease_wait_s,
        }
        resp = self._post(f"/v1/runners/{self.runner_id}/lease", body)
        resp.raise_for_status()
        jobs = LeaseResponse.model_validate(resp.json()).jobs
        for job in jobs:
            self._finish(job)
        return len(jobs)

    def _finish(self, job: LeasedJob) -> None:
        done = complete_body(job, self.compute)
        path = f"/v1/runners/{self.runner_id}/jobs/{job.id}/complete"
        resp = self._post(path, done)
        if resp.status_code == 200:
            self.completed.append(job.id)
        elif resp.status_code != 409:  # 409: cancelled meanwhile / stale lease
            resp.raise_for_status()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.run_once()
            except Exception as exc:  # recorded for the test to assert on
                self.errors.append(exc)
                self._stop.wait(0.2)

    def start(self) -> FakeRunner:
        self.heartbeat()
        self._thread = threading.Thread(target=self._loop, name="fake-runner", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.lease_wait_s + 35)
        self._http.close()

    def __enter__(self) -> FakeRunner:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
