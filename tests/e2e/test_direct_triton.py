"""Direct mode end to end on real components: the embedded control plane, one
``gpufleet-runner start --backend docker`` process with ``direct_url`` set and its CPU
Triton container, the SDK and ``tritonclient.http``.

- ``Client.infer(direct=True)`` answers add_sub correctly (numpy check) through the runner's
  direct endpoint (the runner's status counts it; the control plane's infer is not used);
- ``tritonclient.http`` against the direct URL with the ticket as a header: JSON and binary
  tensors, passed to Triton untouched; ``tritonclient.grpc`` against the direct gRPC address
  (ticket in the metadata), with the version pinned from the ticket;
- without a ticket, or with one for another model: 401 from the runner, Triton not asked;
- the runner stopped: the SDK falls back to the control plane (a clear error here, since no
  other runner serves the model), then goes direct again once the runner is back.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest
from gpufleet import Client
from gpufleet.errors import APIError

from tests import rig
from tests.e2e.test_dispatch_docker import (
    MODEL,
    check_add_sub,
    private_repository,
    remove_containers,
    wait_for,
)
from tests.helpers.procs import ControlPlaneProc, RunnerProc, start_control_plane

pytestmark = [pytest.mark.slow, pytest.mark.docker, pytest.mark.timeout(420)]


@pytest.fixture(scope="module")
def fleet(
    docker_host: str, triton_image: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[ControlPlaneProc, RunnerProc]]:
    work = tmp_path_factory.mktemp("direct-triton")
    cp = start_control_plane(work / "cp", {"GPUFLEET_RUNNER_OFFLINE_AFTER_S": "30"})
    runner: RunnerProc | None = None
    try:
        with Client(cp.url, api_key=cp.admin_key, timeout=60) as client:
            client.models.push(rig.MODEL_REPOSITORY / MODEL)
            join = client.admin.create_join_token().join_token
        port, grpc_port = rig.free_port(), rig.free_port()
        runner = RunnerProc(
            cp.url,
            join,
            work / "runner",
            docker_host,
            triton_image,
            private_repository(work / "models"),
            extra_env={
                "GPUFLEET_RUNNER_DIRECT_URL": f"http://127.0.0.1:{port}",
                "GPUFLEET_RUNNER_DIRECT_HOST": "127.0.0.1",
                "GPUFLEET_RUNNER_DIRECT_PORT": str(port),
                "GPUFLEET_RUNNER_DIRECT_GRPC_URL": f"127.0.0.1:{grpc_port}",
                "GPUFLEET_RUNNER_DIRECT_GRPC_PORT": str(grpc_port),
            },
        )
        runner.start()
        runner.wait_ready(timeout=240)
        yield cp, runner
    finally:
        if runner is not None:
            if runner.running():
                runner.terminate(timeout=30)
            remove_containers(docker_host, runner.name)
        cp.stop()


def _ticket(cp: ControlPlaneProc, model: str = MODEL) -> dict[str, Any]:
    tok = httpx.post(f"{cp.url}/v1/auth/token", json={"api_key": cp.admin_key}, timeout=30)
    headers = {"Authorization": f"Bearer {tok.json()['access_token']}"}

    def get() -> dict[str, Any] | None:
        r = httpx.post(f"{cp.url}/v1/models/{model}/direct", json={}, headers=headers, timeout=30)
        return dict(r.json()) if r.status_code == 200 else None

    return dict(wait_for("a direct ticket", get, 60))


def test_direct_mode_on_real_triton(fleet: tuple[ControlPlaneProc, RunnerProc]) -> None:
    import tritonclient.http as httpclient

    cp, runner = fleet
    t = _ticket(cp)
    rng = np.random.default_rng(7)
    with Client(cp.url, api_key=cp.admin_key, timeout=60) as client:
        for rows in (1, 3):
            a = rng.uniform(-9, 9, (rows, 4)).astype(np.float32)
            b = rng.uniform(-9, 9, (rows, 4)).astype(np.float32)
            out = client.infer(MODEL, {"INPUT0": a, "INPUT1": b}, direct=True)
            check_add_sub(a, b, out["OUTPUT0"], out["OUTPUT1"])
        assert client.direct_tickets.direct_calls == 2 and client.direct_tickets.fallbacks == 0
        assert runner.status()["direct"]["served"] >= 2

        # tritonclient.http at the direct URL, the ticket as a header, binary tensors
        host = t["url"].removeprefix("http://")
        tc = httpclient.InferenceServerClient(host)
        try:
            a = np.arange(8, dtype=np.float32).reshape(2, 4)
            b = np.ones((2, 4), dtype=np.float32)
            for binary in (True, False):
                inputs = [httpclient.InferInput(n, [2, 4], "FP32") for n in ("INPUT0", "INPUT1")]
                inputs[0].set_data_from_numpy(a, binary_data=binary)
                inputs[1].set_data_from_numpy(b, binary_data=binary)
                outs = [
                    httpclient.InferRequestedOutput(n, binary_data=binary)
                    for n in ("OUTPUT0", "OUTPUT1")
                ]
                res = tc.infer(
                    MODEL, inputs, outputs=outs, headers={"Authorization": f"Bearer {t['ticket']}"}
                )
                check_add_sub(a, b, res.as_numpy("OUTPUT0"), res.as_numpy("OUTPUT1"))
            served = runner.status()["direct"]["served"]
            with pytest.raises(Exception, match="ticket is required"):
                tc.infer(MODEL, inputs)
        finally:
            tc.close()
        # tritonclient.grpc at the direct gRPC address, the ticket in the metadata
        import tritonclient.grpc as grpcclient
        from tritonclient.utils import InferenceServerException

        assert t["grpc_url"] is not None
        gc = grpcclient.InferenceServerClient(t["grpc_url"])
        try:
            inputs = [grpcclient.InferInput(n, [2, 4], "FP32") for n in ("INPUT0", "INPUT1")]
            inputs[0].set_data_from_numpy(a)
            inputs[1].set_data_from_numpy(b)
            md = {"authorization": f"Bearer {t['ticket']}"}
            res = gc.infer(MODEL, inputs, headers=md)
            check_add_sub(a, b, res.as_numpy("OUTPUT0"), res.as_numpy("OUTPUT1"))
            assert res.get_response().model_version == "1"  # pinned from the ticket
            assert gc.is_model_ready(MODEL, headers=md) and gc.is_server_live()
            with pytest.raises(InferenceServerException, match="ticket is required"):
                gc.infer(MODEL, inputs)
            with pytest.raises(InferenceServerException, match="not 'other'"):
                gc.infer("other", inputs, headers=md)
            served = runner.status()["direct"]["served"]
        finally:
            gc.close()
        r = httpx.post(
            f"{t['url']}/v2/models/other/infer",
            json={"inputs": []},
            headers={"Authorization": f"Bearer {t['ticket']}"},
            timeout=10,
        )
        assert r.status_code == 401 and "not 'other'" in r.json()["error"]
        st = runner.status()["direct"]
        assert st["served"] == served and st["refused"] >= 2

        # the runner stopped: the SDK tries direct, then the control plane (no runner
        # there either: a clear API error, not a hang); back: direct again
        runner.terminate(timeout=60)
        a = np.ones((1, 4), dtype=np.float32)
        with contextlib.suppress(APIError):
            client.infer(MODEL, {"INPUT0": a, "INPUT1": a}, direct=True, timeout=3)
        assert client.direct_tickets.fallbacks == 1
        runner.start()
        runner.wait_ready(timeout=240)
        out = wait_for(
            "a direct answer after the restart",
            lambda: client.infer(MODEL, {"INPUT0": a, "INPUT1": a}, direct=True),
            60,
        )
        check_add_sub(a, a, out["OUTPUT0"], out["OUTPUT1"])
        assert client.direct_tickets.direct_calls == 3
        # the ticket issued before the restart is still good (same runner id, offline check)
        r = httpx.post(
            f"{t['url']}/v2/models/{MODEL}/infer",
            json={
                "inputs": [
                    {"name": n, "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}
                    for n in ("INPUT0", "INPUT1")
                ]
            },
            headers={"Authorization": f"Bearer {t['ticket']}"},
            timeout=30,
        )
        assert r.status_code == 200, r.text
        assert r.json()["outputs"][0]["data"] == [2, 4, 6, 8]
