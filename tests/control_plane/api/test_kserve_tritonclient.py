"""``tritonclient.http.InferenceServerClient`` pointed at the control plane (uvicorn on
127.0.0.1), unchanged but for the bearer token in ``headers=``; jobs run through the queue
and are executed by a signed fake runner computing add_sub."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
import uvicorn
from tritonclient.utils import InferenceServerException

from control_plane.app import create_app
from control_plane.composition import Services
from control_plane.storage.stores import Stores
from tests.conftest import free_port
from tests.control_plane.api.helpers import push_model
from tests.helpers.fake_runner import FakeRunner, JobError, add_sub
from tests.helpers.kserve_runner import bearer, with_kserve_routes


@pytest.fixture
def server(settings: Any, services: Services, stores: Stores) -> Iterator[str]:
    """The app under uvicorn in a thread on 127.0.0.1; its host:port."""
    port = free_port()
    app = with_kserve_routes(create_app(settings, services))
    stores.set_public_url(f"http://127.0.0.1:{port}")  # the embedded store's blob URLs
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not srv.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    yield f"127.0.0.1:{port}"
    srv.should_exit = True
    thread.join(timeout=10)


def add_sub_or_fail(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """add_sub, failing the job (as Triton would) when INPUT0 starts with a negative value."""
    if inputs["INPUT0"].reshape(-1)[0] < 0:
        raise JobError("triton_error", "model raised: negative input")
    return add_sub(inputs)


def inputs(a: np.ndarray, b: np.ndarray, binary: bool) -> list[triton.InferInput]:
    out = []
    for name, value in (("INPUT0", a), ("INPUT1", b)):
        t = triton.InferInput(name, list(value.shape), "FP32")
        t.set_data_from_numpy(value, binary_data=binary)
        out.append(t)
    return out


@pytest.fixture
async def tokens(server: str, services: Services) -> dict[str, str]:
    """add_sub pushed through the models API; a bearer header of its owner; a join token."""
    auth = services.auth
    async with httpx.AsyncClient(base_url=f"http://{server}", timeout=30) as c:
        user = await bearer(c, auth.issue_api_key("acme", "user", "u").api_key)
        admin = await bearer(c, auth.issue_api_key("ops", "admin", "a").api_key)
        await push_model(c, user)
        r = await c.post("/v1/admin/join-tokens", headers=admin, json={})
        return {"Authorization": user["Authorization"], "join": r.json()["join_token"]}


def test_tritonclient_against_the_control_plane(server: str, tokens: dict[str, str]) -> None:
    h = {"Authorization": tokens["Authorization"]}

    def fresh() -> dict[str, str]:
        # tritonclient writes Inference-Header-Content-Length into the caller's headers dict
        # on binary requests (real Triton would see the stale value too): a copy per infer.
        return dict(h)

    client = triton.InferenceServerClient(url=server, connection_timeout=30, network_timeout=90)
    try:
        assert client.is_server_live(headers=h)
        assert client.is_server_ready(headers=h)
        assert not client.is_server_live()  # no token: 401
        assert client.get_server_metadata(headers=h)["name"] == "gpufleet"

        meta = client.get_model_metadata("add_sub", headers=h)
        assert meta["versions"] == ["1"] and meta["platform"] == "python"
        assert meta["inputs"][0] == {"name": "INPUT0", "datatype": "FP32", "shape": [-1, 4]}
        assert client.get_model_metadata("add_sub", "1", headers=h)["name"] == "add_sub"
        assert client.get_model_config("add_sub", headers=h)["max_batch_size"] == 8
        assert client.is_model_ready("add_sub", headers=h)
        assert client.is_model_ready("add_sub", "1", headers=h)
        assert not client.is_model_ready("add_sub", "2", headers=h)
        assert not client.is_model_ready("nope", headers=h)
        with pytest.raises(InferenceServerException, match="not found"):
            client.get_model_metadata("nope", headers=h)

        a = np.array([[1, 2, 3, 4], [5, 6, 7, 8]], dtype=np.float32)
        b = np.array([[1, 1, 1, 1], [0.5, 0.5, 0.5, 0.5]], dtype=np.float32)
        with FakeRunner(f"http://{server}", tokens["join"], compute=add_sub_or_fail) as runner:
            for binary in (False, True):
                outs = [
                    triton.InferRequestedOutput(n, binary_data=binary)
                    for n in ("OUTPUT0", "OUTPUT1")
                ]
                result = client.infer(
                    "add_sub",
                    inputs(a, b, binary),
                    outputs=outs,
                    request_id=f"r-{binary}",
                    headers=fresh(),
                )
                np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)
                np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)
                response = result.get_response()
                assert response["id"] == f"r-{binary}" and response["model_version"] == "1"
                assert ("data" in response["outputs"][0]) is not binary

            # no outputs listed: tritonclient asks for every output in binary
            result = client.infer("add_sub", inputs(a, b, True), model_version="1", headers=fresh())
            np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)
            assert result.as_numpy("OUTPUT0").dtype == np.float32

            with pytest.raises(InferenceServerException) as failed:
                client.infer("add_sub", inputs(-a, b, True), headers=fresh())
            assert str(failed.value) == "[500] model raised: negative input"
        assert runner.errors == []
        assert len(runner.completed) == 4  # the failed job included

        with pytest.raises(InferenceServerException) as missing:
            client.infer("nope", inputs(a, b, False), headers=fresh())
        assert str(missing.value).startswith("[404] model 'nope'")
        with pytest.raises(InferenceServerException) as wrong:
            client.infer("add_sub", inputs(a[:, :3], b[:, :3], True), headers=fresh())
        assert str(wrong.value).startswith("[422] input 'INPUT0'")
    finally:
        client.close()
