"""``tritonclient.http`` pointed at the control plane, end to end on real processes.

``python -m control_plane serve --embedded`` and ``gpufleet-runner start --backend docker``
run as subprocesses; the runner starts the CPU Triton image on the test's Docker engine and
serves ``add_sub`` from model_repository/. Triton's own HTTP client, with a bearer token in
its headers, then talks KServe v2 to the control plane: health, metadata, readiness and
``infer`` (JSON, and Triton's binary tensor extension), every request running as a job
through the queue. Both processes are stopped by pid and the Triton container is removed by
id at the end.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from gpufleet import Client

from runner.backends.container_spec import LABEL_ROLE, LABEL_RUNNER
from tests import rig

pytestmark = [pytest.mark.docker, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
RUNNER_BIN = Path(sys.executable).parent / "gpufleet-runner"
READY = re.compile(r"listening on (http://127\.0\.0\.1:\d+)")


def _stop(proc: subprocess.Popen[Any], timeout: float = 60) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


@dataclass
class Fleet:
    url: str
    token: str
    runner_log: Path


@pytest.fixture
def fleet(
    docker_host: str, triton_image: str, model_repository: Path, tmp_path: Path
) -> Iterator[Fleet]:
    import docker

    env = {k: v for k, v in os.environ.items() if not k.startswith("GPUFLEET_")}
    env["GPUFLEET_METRICS_PUBLIC"] = "true"  # the test scrapes /metrics without a token
    key_file = tmp_path / "admin.key"
    cp_log = tmp_path / "control-plane.log"
    port = rig.free_port()
    with cp_log.open("w") as out:  # a file, not a pipe: a full pipe would block the server
        cp = subprocess.Popen(
            [sys.executable, "-m", "control_plane", "serve", "--embedded", "--data-dir",
             str(tmp_path / "data"), "--host", "127.0.0.1", "--port", str(port),
             "--admin-key-file", str(key_file)],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    runner: subprocess.Popen[Any] | None = None
    name = f"kserve-e2e-{os.getpid()}"
    runner_log = tmp_path / "runner.log"
    try:
        url = ""
        deadline = time.monotonic() + 60
        while not url and time.monotonic() < deadline and cp.poll() is None:
            m = READY.search(cp_log.read_text())
            url = m.group(1) if m else ""
            time.sleep(0.1)
        assert url, "the control plane did not start:\n" + cp_log.read_text()
        admin_key = key_file.read_text().strip()
        with Client(url, api_key=admin_key, timeout=60.0) as c:
            c.models.push(model_repository / "add_sub")
            join = c.admin.create_join_token().join_token
        runner_env = {
            **env,
            "GPUFLEET_RUNNER_STATE_DIR": str(tmp_path / "runner"),
            "GPUFLEET_RUNNER_NAME": name,
            "GPUFLEET_RUNNER_DOCKER_HOST": docker_host,
            "GPUFLEET_RUNNER_TRITON_IMAGE": triton_image,
            "GPUFLEET_RUNNER_MODEL_REPOSITORY": str(model_repository),
            "GPUFLEET_RUNNER_TRITON_HTTP_PORT": str(rig.free_port()),
            "GPUFLEET_RUNNER_TRITON_GRPC_PORT": str(rig.free_port()),
            "GPUFLEET_RUNNER_TRITON_METRICS_PORT": str(rig.free_port()),
            "GPUFLEET_RUNNER_STATUS_PORT": str(rig.free_port()),
            "GPUFLEET_RUNNER_SHM_SIZE": "256m",
            "GPUFLEET_RUNNER_ULIMITS": '{"stack": 67108864}',
        }
        with runner_log.open("w") as log:
            runner = subprocess.Popen(
                [str(RUNNER_BIN), "start", "--control-plane-url", url, "--join-token", join,
                 "--backend", "docker"],
                cwd=ROOT, env=runner_env, stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
        r = httpx.post(f"{url}/v1/auth/token", json={"api_key": admin_key}, timeout=30)
        r.raise_for_status()
        yield Fleet(url, r.json()["access_token"], runner_log)
    finally:
        if runner is not None:
            _stop(runner)
        _stop(cp, 30)
        client = docker.DockerClient(base_url=docker_host)
        try:
            filters = {"label": [f"{LABEL_RUNNER}={name}", f"{LABEL_ROLE}=triton"]}
            for container in client.containers.list(all=True, filters=filters):
                client.api.remove_container(container.id, force=True)
        finally:
            client.close()


def _wait_until_served(f: Fleet, timeout: float = 300) -> None:
    """Until a runner reports add_sub READY (Triton started and loaded it)."""
    headers = {"Authorization": f"Bearer {f.token}"}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        runners = httpx.get(f"{f.url}/v1/runners", headers=dict(headers), timeout=30).json()
        for r in runners.get("runners", []):
            if any(m["name"] == "add_sub" and m["state"] == "READY" for m in r["models"]):
                return
        time.sleep(1)
    pytest.fail("no runner served add_sub in time; runner log:\n" + f.runner_log.read_text())


def test_tritonclient_http_against_the_control_plane(fleet: Fleet) -> None:
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    headers = {"Authorization": f"Bearer {fleet.token}"}
    client = httpclient.InferenceServerClient(
        url=fleet.url.removeprefix("http://"), network_timeout=180.0
    )
    try:
        assert client.is_server_live(headers=dict(headers))
        assert not client.is_server_live()  # no bearer token: 401
        with pytest.raises(InferenceServerException, match=r"401|[Uu]nauthorized"):
            client.get_model_metadata("add_sub")
        meta = client.get_model_metadata("add_sub", headers=dict(headers))
        assert {i["name"] for i in meta["inputs"]} == {"INPUT0", "INPUT1"}
        assert {o["name"] for o in meta["outputs"]} == {"OUTPUT0", "OUTPUT1"}

        _wait_until_served(fleet)
        assert client.is_server_ready(headers=dict(headers))
        assert client.is_model_ready("add_sub", headers=dict(headers))

        a = np.array([[1.5, 2, 3, 4], [0, -1, 10, 0.25]], dtype=np.float32)
        b = np.array([[0.5, 1, 1, 1], [2, 2, 2, 2]], dtype=np.float32)
        for binary in (False, True):
            inputs = [
                httpclient.InferInput("INPUT0", list(a.shape), "FP32"),
                httpclient.InferInput("INPUT1", list(b.shape), "FP32"),
            ]
            inputs[0].set_data_from_numpy(a, binary_data=binary)
            inputs[1].set_data_from_numpy(b, binary_data=binary)
            outputs = [
                httpclient.InferRequestedOutput("OUTPUT0", binary_data=binary),
                httpclient.InferRequestedOutput("OUTPUT1", binary_data=binary),
            ]
            result = client.infer("add_sub", inputs, outputs=outputs, headers=dict(headers))
            out0, out1 = result.as_numpy("OUTPUT0"), result.as_numpy("OUTPUT1")
            assert out0 is not None and out1 is not None
            assert out0.dtype == np.float32 and out0.shape == (2, 4)
            np.testing.assert_array_equal(out0, a + b)
            np.testing.assert_array_equal(out1, a - b)
            # Dispatched in memory to the runner's channel: no job was written.
            assert "job_id" not in (result.get_response().get("parameters") or {})
        metrics = httpx.get(f"{fleet.url}/metrics", timeout=30).text
        dispatched = [m for m in metrics.splitlines() if m.startswith("gpufleet_infer_dispatched")]
        assert any('outcome="ok"' in m and float(m.split()[-1]) >= 2 for m in dispatched), metrics
    finally:
        client.close()
