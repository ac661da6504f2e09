"""Synchronous inference dispatched over the runner channel, on real processes and sockets.

A control plane (``python -m control_plane serve --embedded``, SQLite) and a real
``gpufleet-runner start --backend mock`` process (no Triton: the mock engine answers zeros
shaped from config.pbtxt) on loopback. The runner keeps its WebSocket channel open; these
tests check what goes over it:

- ``POST /v1/models/add_sub/infer`` and KServe v2 HTTP (``tritonclient.http``) are answered
  by the runner in memory (``path: "dispatch"``); an ``Idempotency-Key`` takes the job path;
- an upgrade without a valid runner signature is refused with 401 before any WebSocket;
- a hand-driven channel (the ``websockets`` client, signed like a runner) sees the ``infer``
  frame, and its ``result`` / ``error`` frames / hang-up become 200 / 400 / 503;
- revoking a runner closes its channel (code 4401) within ``channel_recheck_s``.

Processes are stopped by pid; the module shares one control plane and one runner.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from gpufleet import Client, signing
from gpufleet.channel import pack_frame, unpack_frame
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.conftest import free_port
from tests.helpers.procs import ControlPlaneProc, RunnerProc, start_control_plane

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("dispatch-channel")]

REPO = Path(__file__).resolve().parents[2]
MODEL = "add_sub"
RECHECK_S = 0.3  # the control plane's revocation re-check of open channels
STEP_S = 20.0  # upper bound of any one wait below (a loaded 2-core machine)


@dataclass
class Fleet:
    cp: ControlPlaneProc
    client: Client
    token: str
    join_token: str
    runner: RunnerProc
    grpc_port: int = 0  # the control plane's KServe gRPC port

    @property
    def admin(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def http(self) -> httpx.Client:
        return httpx.Client(base_url=self.cp.url, headers=self.admin, timeout=STEP_S)

    def served(self) -> int:
        return int(self.runner.status()["dispatch"]["served"])


def wait_for(what: str, check: Callable[[], Any], timeout: float = STEP_S) -> Any:
    """Poll ``check`` until it returns something truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(OSError, ValueError, KeyError):
            got = check()
            if got:
                return got
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


def add_sub_body(rows: int = 2) -> dict[str, Any]:
    a = np.arange(rows * 4, dtype=np.float32).reshape(rows, 4)
    return {
        "inputs": [
            {"name": n, "datatype": "FP32", "shape": [rows, 4], "data": a.ravel().tolist()}
            for n in ("INPUT0", "INPUT1")
        ],
        "timeout_s": STEP_S,
    }


def check_zeros(body: dict[str, Any], rows: int = 2) -> None:
    """The mock engine's answer: both outputs, zeros of the config's shape."""
    outs = {o["name"]: o for o in body["outputs"]}
    assert set(outs) == {"OUTPUT0", "OUTPUT1"}, body
    for o in outs.values():
        assert (o["datatype"], o["shape"]) == ("FP32", [rows, 4]), o
        assert o["data"] == [0.0] * rows * 4, o


def wait_dispatch(fleet: Fleet) -> str:
    """Until the runner's channel is open with add_sub READY and this control plane routes
    to it (its ``models`` frame follows READY within 0.2 s); the runner's id."""

    def connected() -> str | None:
        st = fleet.runner.status()
        ready = any(m["name"] == MODEL and m["state"] == "READY" for m in st["models"])
        return st["runner_id"] if ready and st["dispatch"]["connected"] else None

    runner_id: str = wait_for("the runner's dispatch channel", connected)
    with fleet.http() as http:

        def routed() -> bool:  # short timeout: a call that took the job path does not linger
            r = http.post(f"/v1/models/{MODEL}/infer", json={**add_sub_body(), "timeout_s": 2})
            return r.status_code == 200 and r.json()["path"] == "dispatch"

        wait_for("the control plane to route add_sub to the channel", routed, 10)
    return runner_id


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    work = tmp_path_factory.mktemp("dispatch")
    # no implicit deployments: the hand-driven runners below serve "scale" without heartbeats
    grpc_port = free_port()
    env = {
        "GPUFLEET_CHANNEL_RECHECK_S": str(RECHECK_S),
        "GPUFLEET_IMPLICIT_MAX_REPLICAS": "0",
        "GPUFLEET_GRPC_PORT": str(grpc_port),
    }
    cp = start_control_plane(work / "cp", env)
    try:
        with Client(cp.url, api_key=cp.admin_key, timeout=STEP_S) as client:
            client.models.push(REPO / "model_repository" / MODEL)
            client.models.push(REPO / "tests" / "fixtures" / "models" / "scale")
            join = client.admin.create_join_token(max_uses=20).join_token
            token = httpx.post(
                f"{cp.url}/v1/auth/token", json={"api_key": cp.admin_key}, timeout=STEP_S
            ).json()["access_token"]
            repository = work / "models"  # the runner's own: add_sub only
            shutil.copytree(REPO / "model_repository" / MODEL, repository / MODEL)
            runner = RunnerProc(
                cp.url, join, work / "runner", "unused", "unused", repository, backend="mock"
            )
            runner.start()
            try:
                runner.wait_ready(timeout=60)
                yield Fleet(cp, client, token, join, runner, grpc_port)
            finally:
                runner.terminate(timeout=20)
    finally:
        cp.stop()


# --------------------------------------------------------------------------- the real runner


def test_v1_infer_is_dispatched_to_the_connected_runner(fleet: Fleet) -> None:
    runner_id = wait_dispatch(fleet)
    before, jobs_before = fleet.served(), len(list(fleet.client.list(model=MODEL)))
    with fleet.http() as http:
        r = http.post(f"/v1/models/{MODEL}/infer", json=add_sub_body(3))
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["path"], body["runner_id"], body["job_id"]) == ("dispatch", runner_id, None)
    assert (body["model"], body["model_version"]) == (MODEL, "1")
    assert {"receive_ms", "triton_ms", "total_ms"} <= set(body["timings"])
    check_zeros(body, 3)

    x = np.ones((2, 4), np.float32)
    out = fleet.client.infer(MODEL, {"INPUT0": x, "INPUT1": x}, timeout=STEP_S)
    assert set(out) == {"OUTPUT0", "OUTPUT1"}
    np.testing.assert_array_equal(out["OUTPUT0"], np.zeros((2, 4), np.float32))
    assert fleet.served() == before + 2  # both ran over the channel
    assert len(list(fleet.client.list(model=MODEL))) == jobs_before  # and wrote no job
    with fleet.http() as http:
        metrics = http.get("/metrics").text
    for stage in ("receive", "triton", "total"):  # the runner's stage timings, per model
        line = f'gpufleet_infer_runner_stage_seconds_count{{model="{MODEL}",stage="{stage}"}}'
        assert any(m.startswith(line) and float(m.split()[-1]) >= 2 for m in metrics.splitlines())
    dispatched = [m for m in metrics.splitlines() if m.startswith("gpufleet_infer_dispatched")]
    assert any(f'runner="{runner_id}"' in m and 'outcome="ok"' in m for m in dispatched), dispatched


def test_kserve_http_goes_through_dispatch_and_idempotency_key_through_a_job(
    fleet: Fleet,
) -> None:
    import tritonclient.http as httpclient

    wait_dispatch(fleet)
    before = fleet.served()
    client = httpclient.InferenceServerClient(
        url=fleet.cp.url.removeprefix("http://"), network_timeout=STEP_S
    )
    a = np.array([[1.5, 2, 3, 4], [0, -1, 10, 0.25]], dtype=np.float32)
    try:
        for binary in (False, True):
            inputs = [httpclient.InferInput(n, [2, 4], "FP32") for n in ("INPUT0", "INPUT1")]
            for i in inputs:
                i.set_data_from_numpy(a, binary_data=binary)
            outputs = [
                httpclient.InferRequestedOutput(n, binary_data=binary)
                for n in ("OUTPUT0", "OUTPUT1")
            ]
            result = client.infer(MODEL, inputs, outputs=outputs, headers=dict(fleet.admin))
            for name in ("OUTPUT0", "OUTPUT1"):
                got = result.as_numpy(name)
                assert got is not None and got.dtype == np.float32
                np.testing.assert_array_equal(got, np.zeros((2, 4), np.float32))
            assert "job_id" not in (result.get_response().get("parameters") or {})
        assert fleet.served() == before + 2

        # An Idempotency-Key asks for the durable path: a job, run by the same runner.
        inputs = [httpclient.InferInput(n, [2, 4], "FP32") for n in ("INPUT0", "INPUT1")]
        for i in inputs:
            i.set_data_from_numpy(a, binary_data=False)
        headers = {**fleet.admin, "Idempotency-Key": f"k-{time.monotonic_ns()}"}
        result = client.infer(MODEL, inputs, headers=headers)
        job_id = result.get_response()["parameters"]["job_id"]
        assert fleet.client.get(job_id).status == "SUCCEEDED"
        assert fleet.served() == before + 2
    finally:
        client.close()


# --------------------------------------------------------------------------- the channel itself


def channel_url(fleet: Fleet, runner_id: str) -> str:
    return f"ws://{fleet.cp.url.removeprefix('http://')}/v1/runners/{runner_id}/channel"


def signed(runner_id: str, secret: str) -> dict[str, str]:
    path = f"/v1/runners/{runner_id}/channel"
    return signing.sign_headers(runner_id, secret, "GET", path, "", b"")


def register(fleet: Fleet, name: str) -> tuple[str, str]:
    r = httpx.post(
        f"{fleet.cp.url}/v1/runners/register",
        json={"join_token": fleet.join_token, "name": name},
        timeout=STEP_S,
    )
    assert r.status_code == 201, r.text
    return r.json()["runner_id"], r.json()["secret"]


@pytest.mark.parametrize("forgery", ["unsigned", "wrong_secret", "other_runners_signature"])
async def test_an_unsigned_or_forged_upgrade_is_refused_with_401(
    fleet: Fleet, forgery: str
) -> None:
    runner_id, secret = await asyncio.to_thread(register, fleet, f"forged-{forgery}")
    headers = {
        "unsigned": {},
        "wrong_secret": signed(runner_id, "not-the-secret-" + secret[:8]),
        # a valid signature of another runner's channel path, presented on this one
        "other_runners_signature": signed("run_other", secret),
    }[forgery]
    with pytest.raises(InvalidStatus) as info:
        async with connect(channel_url(fleet, runner_id), additional_headers=headers, proxy=None):
            pytest.fail("the upgrade was accepted")
    assert info.value.response.status_code == 401
    body = json.loads(info.value.response.body or b"{}")
    assert body["error"]["code"] == "unauthorized", body
    # the same runner, signed properly, is let in
    async with connect(
        channel_url(fleet, runner_id), additional_headers=signed(runner_id, secret), proxy=None
    ) as ws:
        await ws.send(json.dumps({"type": "hello", "models": [], "capacity": 1}))


async def next_frame(ws: ClientConnection) -> dict[str, Any]:
    return dict(json.loads(await asyncio.wait_for(ws.recv(), STEP_S)))


async def test_a_hand_driven_channel_answers_fails_and_drops_requests(fleet: Fleet) -> None:
    """A runner of our own advertising ``scale`` (the real runner serves add_sub only)."""
    runner_id, secret = await asyncio.to_thread(register, fleet, "hand-driven")
    body = {"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [3], "data": [1, 2, 3]}]}
    async with (
        httpx.AsyncClient(base_url=fleet.cp.url, headers=fleet.admin, timeout=STEP_S) as http,
        connect(
            channel_url(fleet, runner_id), additional_headers=signed(runner_id, secret), proxy=None
        ) as ws,
    ):
        hello = {"models": [{"name": "scale", "version": "1"}], "capacity": 2}
        await ws.send(json.dumps({"type": "hello", **hello}))

        # result frame → 200 with the runner's outputs
        call = asyncio.create_task(http.post("/v1/models/scale/infer", json=body))
        frame = await next_frame(ws)
        assert (frame["type"], frame["model"], frame["version"]) == ("infer", "scale", "1")
        assert frame["inputs"][0]["data"] == [1, 2, 3] and frame["timeout_s"] > 0
        out = {"name": "OUTPUT0", "datatype": "FP32", "shape": [3], "data": [3, 5, 7]}
        reply = {"type": "result", "id": frame["id"], "outputs": [out], "runner_id": runner_id}
        await ws.send(json.dumps(reply))
        r = await asyncio.wait_for(call, STEP_S)
        assert r.status_code == 200, r.text
        assert (r.json()["path"], r.json()["runner_id"]) == ("dispatch", runner_id)
        (got,) = r.json()["outputs"]
        assert {k: got[k] for k in out} == out

        # error frames → 400 (the caller's fault) and 500 (the model's)
        for code, status in (("invalid_input", 400), ("triton_error", 500)):
            call = asyncio.create_task(http.post("/v1/models/scale/infer", json=body))
            frame = await next_frame(ws)
            err = {"type": "error", "id": frame["id"], "code": code, "message": f"said {code}"}
            await ws.send(json.dumps(err))
            r = await asyncio.wait_for(call, STEP_S)
            assert r.status_code == status, r.text
            assert r.json()["error"]["message"] == f"said {code}"

        # the channel drops with a request in flight → 503 at once, not at the timeout
        call = asyncio.create_task(
            http.post("/v1/models/scale/infer", json={**body, "timeout_s": 60})
        )
        await next_frame(ws)
        t = time.monotonic()
        await ws.close()
        r = await asyncio.wait_for(call, STEP_S)
        assert r.status_code == 503, r.text
        assert r.json()["error"]["code"] == "unavailable"
        assert time.monotonic() - t < 5


async def next_binary(ws: ClientConnection) -> tuple[dict[str, Any], bytes]:
    data = await asyncio.wait_for(ws.recv(), STEP_S)
    assert isinstance(data, bytes), data
    return unpack_frame(data)


async def test_kserve_http_short_path_passes_bytes_through_a_raw_channel(fleet: Fleet) -> None:
    """KServe HTTP infer with a known token (kserve_fast.py): the body reaches a runner that
    passes HTTP through byte for byte, its answer bytes and framing headers come back as
    they are; a refusal is a V2 error, a dropped channel 503, no token still 401."""
    runner_id, secret = await asyncio.to_thread(register, fleet, "raw-http")
    head = b'{"inputs":[{"name":"INPUT0","datatype":"FP32","shape":[3],'
    head += b'"parameters":{"binary_data_size":12}}]}'
    body = head + np.array([1, 2, 3], np.float32).tobytes()
    answer_head = b'{"model_name":"scale","outputs":[{"name":"OUTPUT0","datatype":"FP32",'
    answer_head += b'"shape":[3],"parameters":{"binary_data_size":12}}]}'
    answer = answer_head + np.array([2, 4, 6], np.float32).tobytes()
    headers = {
        **fleet.admin,
        "Inference-Header-Content-Length": str(len(head)),
        "Content-Type": "application/octet-stream",
        "X-Request-ID": "short-path-1",
    }
    async with (
        httpx.AsyncClient(base_url=fleet.cp.url, timeout=STEP_S) as http,
        connect(
            channel_url(fleet, runner_id), additional_headers=signed(runner_id, secret), proxy=None
        ) as ws,
    ):
        hello = {"models": [{"name": "scale", "version": "1"}], "capacity": 4, "raw": ["http"]}
        await ws.send(json.dumps({"type": "hello", **hello}))
        # twice: the first call of a token may take the ordinary route (it verifies it)
        for _ in range(2):
            call = asyncio.create_task(
                http.post("/v2/models/scale/versions/1/infer", content=body, headers=headers)
            )
            frame, sent = await next_binary(ws)
            assert (frame["type"], frame["protocol"], frame["model"]) == ("infer", "http", "scale")
            assert frame["header_length"] == len(head)
            assert frame["request_id"] == "short-path-1"
            assert sent == body
            reply = {
                "type": "result",
                "id": frame["id"],
                "runner_id": runner_id,
                "header_length": len(answer_head),
                "content_type": "application/octet-stream",
            }
            await ws.send(pack_frame(reply, answer))
            r = await asyncio.wait_for(call, STEP_S)
            assert r.status_code == 200, r.text
            assert r.content == answer
            assert r.headers["inference-header-content-length"] == str(len(answer_head))
            assert r.headers["content-type"] == "application/octet-stream"
            assert r.headers["x-request-id"] == "short-path-1"

        # v1 infer of JSON-exact datatypes: the KServe JSON request it maps to, passed
        # through; Triton's JSON outputs are the v1 outputs
        v1 = {
            "inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [3], "data": [[1, 2], [3]]}],
            "outputs": [{"name": "OUTPUT0"}],
            "parameters": {"p": 1},
        }
        call = asyncio.create_task(
            http.post("/v1/models/scale/infer", json=v1, headers=fleet.admin)
        )
        frame, sent = await next_binary(ws)
        assert (frame["protocol"], frame["version"]) == ("http", "1")
        assert json.loads(sent) == {
            "inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [3], "data": [1, 2, 3]}],
            "outputs": [{"name": "OUTPUT0"}],
            "parameters": {"p": 1},
        }
        out = {"name": "OUTPUT0", "datatype": "FP32", "shape": [3], "data": [3.0, 5.0, 7.0]}
        triton = {"model_name": "scale", "model_version": "1", "outputs": [out]}
        reply = {"type": "result", "id": frame["id"], "runner_id": runner_id}
        await ws.send(pack_frame(reply, json.dumps(triton).encode()))
        r = await asyncio.wait_for(call, STEP_S)
        assert r.status_code == 200, r.text
        assert (r.json()["path"], r.json()["runner_id"]) == ("dispatch", runner_id)
        (got,) = r.json()["outputs"]
        assert {k: got[k] for k in out} == out

        # Triton's refusal → 400 with KServe's error body
        call = asyncio.create_task(
            http.post("/v2/models/scale/infer", content=body, headers=headers)
        )
        frame, _ = await next_binary(ws)
        await ws.send(
            json.dumps(
                {"type": "error", "id": frame["id"], "code": "invalid_input", "message": "no"}
            )
        )
        r = await asyncio.wait_for(call, STEP_S)
        assert r.status_code == 400, r.text
        assert (r.json()["error"], r.json()["code"]) == ("no", "invalid_input")

        # no token: the ordinary route answers 401 (nothing reaches the runner)
        bare = {k: v for k, v in headers.items() if k != "Authorization"}
        r = await http.post("/v2/models/scale/infer", content=body, headers=bare)
        assert r.status_code == 401, r.text

        # the channel drops with the request in flight → 503 at once
        call = asyncio.create_task(
            http.post("/v2/models/scale/infer", content=body, headers=headers)
        )
        await next_binary(ws)
        await ws.close()
        r = await asyncio.wait_for(call, STEP_S)
        assert r.status_code == 503, r.text
        assert r.json()["code"] == "unavailable"


def _latency_count(text: str, template: str, status: str) -> float:
    """The request-latency histogram's count for ``template`` and ``status``."""
    want = (f'route="{template}"', f'status="{status}"', 'method="POST"')
    for line in text.splitlines():
        if line.startswith("gpufleet_http_request_duration_seconds_count{") and all(
            w in line for w in want
        ):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def test_kserve_http_short_path_keeps_the_listeners_guarantees(fleet: Fleet) -> None:
    """The listener answers a known token's KServe infer itself (no ASGI stack): a body in
    many chunks arrives whole, a body over the limit without Content-Length is a 413 V2 error
    that never reaches the runner, a request id is made up when none is given, the latency
    metric counts the call under its route template, the connection stays open."""
    runner_id, secret = await asyncio.to_thread(register, fleet, "raw-http-guard")
    body = b'{"inputs":[{"name":"INPUT0","datatype":"FP32","shape":[1],"data":[1]}]}'
    template = "/v2/models/{model}/infer"
    headers = {**fleet.admin, "Content-Type": "application/json"}

    async def chunks(data: bytes, size: int) -> Any:
        for i in range(0, len(data), size):
            yield data[i : i + size]
            await asyncio.sleep(0)

    async with (
        httpx.AsyncClient(base_url=fleet.cp.url, timeout=STEP_S) as http,
        connect(
            channel_url(fleet, runner_id), additional_headers=signed(runner_id, secret), proxy=None
        ) as ws,
    ):
        hello = {"models": [{"name": "scale", "version": "1"}], "capacity": 4, "raw": ["http"]}
        await ws.send(json.dumps({"type": "hello", **hello}))
        metrics = (await http.get("/metrics", headers=fleet.admin)).text
        before = _latency_count(metrics, template, "200")
        for _ in range(3):  # the first call of a token may take the ordinary route
            call = asyncio.create_task(
                http.post("/v2/models/scale/infer", content=chunks(body, 7), headers=headers)
            )
            frame, sent = await next_binary(ws)
            assert sent == body  # chunked, in 11 pieces: whole
            reply = {"type": "result", "id": frame["id"], "runner_id": runner_id}
            await ws.send(pack_frame(reply, b'{"outputs":[]}'))
            r = await asyncio.wait_for(call, STEP_S)
            assert r.status_code == 200, r.text
            assert r.content == b'{"outputs":[]}'
            assert r.headers["x-request-id"].startswith("req_")  # made up, and the runner's
            assert r.headers["x-request-id"] == frame["request_id"]  # log lines carry it
        metrics = (await http.get("/metrics", headers=fleet.admin)).text
        assert _latency_count(metrics, template, "200") == before + 3

        # a client that asks to close: answered, told so, and the connection is closed
        call = asyncio.create_task(
            http.post(
                "/v2/models/scale/infer", content=body, headers={**headers, "Connection": "close"}
            )
        )
        frame, _ = await next_binary(ws)
        reply = {"type": "result", "id": frame["id"], "runner_id": runner_id}
        await ws.send(pack_frame(reply, b'{"outputs":[]}'))
        r = await asyncio.wait_for(call, STEP_S)
        assert (r.status_code, r.headers["connection"]) == (200, "close")

        # framing headers a runner gets wrong never reach the client: 500
        call = asyncio.create_task(
            http.post("/v2/models/scale/infer", content=body, headers=headers)
        )
        frame, _ = await next_binary(ws)
        reply = {**reply, "id": frame["id"], "content_type": "text/plain\r\nx-evil: 1"}
        await ws.send(pack_frame(reply, b"{}"))
        r = await asyncio.wait_for(call, STEP_S)
        assert r.status_code == 500 and "x-evil" not in r.headers, r.headers

        # over the limit (8 MiB), no Content-Length: 413 while streaming, runner untouched
        big = b" " * (8 * 1024 * 1024 + 1)
        r = await http.post("/v2/models/scale/infer", content=chunks(big, 1 << 20), headers=headers)
        assert r.status_code == 413, r.text
        assert r.json()["code"] == "payload_too_large"
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(ws.recv(), 0.3)
        metrics = (await http.get("/metrics", headers=fleet.admin)).text
        assert _latency_count(metrics, template, "413") >= 1


async def test_kserve_grpc_passes_bytes_through_a_raw_channel(fleet: Fleet) -> None:
    """KServe gRPC ModelInfer (tritonclient.grpc, the control plane's own HTTP/2 server): the
    serialized request reaches a runner that passes gRPC through, naming the resolved model
    and version; the runner's answer bytes are what the client gets; a refusal is
    INVALID_ARGUMENT with Triton's message, no token UNAUTHENTICATED, a dropped channel
    UNAVAILABLE."""
    import tritonclient.grpc.aio as grpcclient
    from tritonclient.grpc import service_pb2
    from tritonclient.utils import InferenceServerException

    runner_id, secret = await asyncio.to_thread(register, fleet, "raw-grpc")
    data = np.array([1, 2, 3], np.float32)
    answer = service_pb2.ModelInferResponse(model_name="scale", model_version="1", id="r-7")
    answer.outputs.add(name="OUTPUT0", datatype="FP32", shape=[3])
    answer.raw_output_contents.append((2 * data + 1).tobytes())
    auth = {"authorization": f"Bearer {fleet.token}", "x-request-id": "grpc-path-1"}
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{fleet.grpc_port}")

    def infer(headers: dict[str, str]) -> asyncio.Task[Any]:
        item = grpcclient.InferInput("INPUT0", [3], "FP32")
        item.set_data_from_numpy(data)
        return asyncio.create_task(
            client.infer("scale", [item], request_id="r-7", headers=headers, client_timeout=STEP_S)
        )

    try:
        async with connect(
            channel_url(fleet, runner_id), additional_headers=signed(runner_id, secret), proxy=None
        ) as ws:
            hello = {"models": [{"name": "scale", "version": "1"}], "capacity": 4, "raw": ["grpc"]}
            await ws.send(json.dumps({"type": "hello", **hello}))
            call = infer(auth)
            frame, sent = await next_binary(ws)
            assert (frame["type"], frame["protocol"], frame["model"]) == ("infer", "grpc", "scale")
            assert frame["request_id"] == "grpc-path-1"
            request = service_pb2.ModelInferRequest.FromString(sent)
            assert (request.model_name, request.model_version, request.id) == ("scale", "1", "r-7")
            assert request.raw_input_contents == [data.tobytes()]
            reply = {"type": "result", "id": frame["id"], "runner_id": runner_id}
            await ws.send(pack_frame(reply, answer.SerializeToString()))
            result = await asyncio.wait_for(call, STEP_S)
            assert result.get_response() == answer
            np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), 2 * data + 1)

            # Triton's refusal -> INVALID_ARGUMENT with its message
            call = infer(auth)
            frame, _ = await next_binary(ws)
            refusal = {"type": "error", "id": frame["id"], "code": "invalid_input", "message": "no"}
            await ws.send(json.dumps(refusal))
            with pytest.raises(InferenceServerException) as refused:
                await asyncio.wait_for(call, STEP_S)
            assert refused.value.status() == "StatusCode.INVALID_ARGUMENT"
            assert refused.value.message() == "no"

            # no token: nothing reaches the runner
            with pytest.raises(InferenceServerException) as denied:
                await asyncio.wait_for(infer({}), STEP_S)
            assert denied.value.status() == "StatusCode.UNAUTHENTICATED"

            # the channel drops with the request in flight -> UNAVAILABLE at once
            call = infer(auth)
            await next_binary(ws)
            await ws.close()
            with pytest.raises(InferenceServerException) as dropped:
                await asyncio.wait_for(call, STEP_S)
            assert dropped.value.status() == "StatusCode.UNAVAILABLE"
    finally:
        await client.close()


async def test_revoking_a_runner_closes_its_channel_with_4401(fleet: Fleet) -> None:
    runner_id, secret = await asyncio.to_thread(register, fleet, "to-revoke")
    async with connect(
        channel_url(fleet, runner_id), additional_headers=signed(runner_id, secret), proxy=None
    ) as ws:
        await ws.send(json.dumps({"type": "hello", "models": [], "capacity": 1}))
        r = await asyncio.to_thread(
            httpx.delete, f"{fleet.cp.url}/v1/runners/{runner_id}", headers=fleet.admin
        )
        assert r.status_code == 200, r.text
        t = time.monotonic()
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(ws.recv(), STEP_S)
        assert time.monotonic() - t < RECHECK_S + 5
        assert ws.close_code == 4401 and ws.close_reason == "runner revoked"
    # and the revoked runner cannot open it again
    with pytest.raises(InvalidStatus) as info:
        async with connect(
            channel_url(fleet, runner_id), additional_headers=signed(runner_id, secret), proxy=None
        ):
            pytest.fail("a revoked runner's channel was accepted")
    assert info.value.response.status_code == 401


def test_a_revoked_runner_process_is_cut_off_and_comes_back_under_a_new_id(
    fleet: Fleet,
) -> None:
    """Revoking the runner process closes its channel (4401) within the re-check period; the
    runner re-registers with its join token and its new channel takes dispatch again."""
    old_id = wait_dispatch(fleet)
    log_start = fleet.runner.log_file.stat().st_size

    def runner_log() -> bytes:
        with fleet.runner.log_file.open("rb") as f:
            f.seek(log_start)
            return f.read()

    with fleet.http() as http:
        before = fleet.served()
        r = http.delete(f"/v1/runners/{old_id}")
        assert r.status_code == 200, r.text
        t = time.monotonic()
        wait_for(
            "the runner's channel to close with 4401",
            lambda: b"dispatch channel closed: received 4401" in runner_log(),
            RECHECK_S + 10,
        )
        assert time.monotonic() - t < RECHECK_S + 10
        served_by_old = fleet.served() - before  # nothing was sent to it after the revoke
        assert served_by_old == 0

        new_id = wait_dispatch(fleet)
        assert new_id != old_id
        r = http.post(f"/v1/models/{MODEL}/infer", json=add_sub_body())
        assert r.status_code == 200, r.text
        assert (r.json()["path"], r.json()["runner_id"]) == ("dispatch", new_id)
        check_zeros(r.json())
        runners = {v["id"]: v["status"] for v in http.get("/v1/runners").json()["runners"]}
        assert runners[old_id] == "REVOKED" and runners[new_id] != "REVOKED"


async def test_a_lease_long_poll_of_a_runner_revoked_meanwhile_claims_nothing(
    fleet: Fleet,
) -> None:
    from tests.control_plane.api.helpers import signed_post

    runner_id, secret = await asyncio.to_thread(register, fleet, "revoked-while-polling")
    lease = {"models": [{"name": "scale", "version": "1"}], "wait_s": 10}  # nobody else polls
    body = {"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [1], "data": [1]}]}
    async with httpx.AsyncClient(base_url=fleet.cp.url, timeout=STEP_S) as http:
        poll = asyncio.create_task(
            signed_post(http, runner_id, secret, f"/v1/runners/{runner_id}/lease", lease)
        )
        await asyncio.sleep(0.5)  # the long poll is waiting
        r = await http.delete(f"/v1/runners/{runner_id}", headers=fleet.admin)
        assert r.status_code == 200, r.text
        r = await http.post("/v1/jobs", headers=fleet.admin, json={"model": "scale", **body})
        assert r.status_code == 202, r.text
        job_id = r.json()["id"]
        try:
            got = await asyncio.wait_for(poll, STEP_S)
            assert got.status_code == 401 or got.json()["jobs"] == [], got.text
        finally:
            await http.post(f"/v1/jobs/{job_id}/cancel", headers=fleet.admin)


# --------------------------------------------------------------------------- job protocol


def test_the_real_runner_leases_and_completes_jobs_over_its_channel(fleet: Fleet) -> None:
    """With the channel open, durable jobs are leased and completed over it (no signed HTTP
    request per call): the runner's ``job_calls`` count grows with the jobs."""
    wait_dispatch(fleet)
    before = int(fleet.runner.status()["dispatch"]["job_calls"])
    x = np.ones((1, 4), np.float32)
    jobs = [fleet.client.submit(MODEL, {"INPUT0": x, "INPUT1": x}) for _ in range(3)]
    for job in jobs:
        done = fleet.client.wait(job.id, timeout=STEP_S)
        assert done.status == "SUCCEEDED", done
    # at least one lease and one complete (one lease may claim several, completes batch)
    assert int(fleet.runner.status()["dispatch"]["job_calls"]) >= before + 2

    # submit(wait=…) (``Prefer: wait``): the finished job, outputs included, in one call
    done = fleet.client.submit(MODEL, {"INPUT0": x, "INPUT1": x}, wait=STEP_S)
    assert done.status == "SUCCEEDED", done
    np.testing.assert_array_equal(
        fleet.client.outputs(done)["OUTPUT0"], np.zeros((1, 4), np.float32)
    )


async def call(ws: ClientConnection, kind: str, rid: int, body: Any) -> dict[str, Any]:
    """One job-protocol call over a hand-driven channel; its ``reply`` frame."""
    await ws.send(json.dumps({"type": kind, "rid": rid, "body": body}))
    while True:
        frame = await next_frame(ws)
        if frame["type"] == "reply":
            assert frame["rid"] == rid
            return frame


async def test_lease_and_complete_over_a_hand_driven_channel(fleet: Fleet) -> None:
    """The channel's ``lease``/``complete`` frames have the HTTP routes' semantics: a job is
    leased with its token, a stale token is refused for that item only, the right one
    commits, a malformed body is a 422 naming the field."""
    runner_id, secret = await asyncio.to_thread(register, fleet, "hand-jobs")
    scale = [{"name": "scale", "version": "1"}]
    body = {"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [3], "data": [1, 2, 3]}]}
    async with (
        httpx.AsyncClient(base_url=fleet.cp.url, headers=fleet.admin, timeout=STEP_S) as http,
        connect(
            channel_url(fleet, runner_id), additional_headers=signed(runner_id, secret), proxy=None
        ) as ws,
    ):
        await ws.send(json.dumps({"type": "hello", "models": [], "capacity": 1}))
        r = await http.post("/v1/jobs", json={"model": "scale", **body})
        assert r.status_code == 202, r.text
        job_id = r.json()["id"]

        leased = await call(ws, "lease", 1, {"models": scale, "max_jobs": 1, "wait_s": 5})
        assert leased["status"] == 200, leased
        (job,) = leased["body"]["jobs"]
        assert job["id"] == job_id and job["inputs"][0]["data"] == [1, 2, 3]

        out = [{"name": "OUTPUT0", "datatype": "FP32", "shape": [3], "data": [3, 5, 7]}]
        item = {"job_id": job_id, "status": "SUCCEEDED", "outputs": out}
        stale = await call(ws, "complete", 2, {"results": [{**item, "lease_token": "stale"}]})
        assert stale["status"] == 200 and stale["body"]["results"][0]["status"] == "conflict"
        done = await call(
            ws, "complete", 3, {"results": [{**item, "lease_token": job["lease_token"]}]}
        )
        assert done["body"]["results"][0]["status"] == "committed", done

        bad = await call(ws, "lease", 4, {"models": scale, "max_jobs": "many"})
        assert bad["status"] == 422, bad
        assert "max_jobs" in json.dumps(bad["error"]), bad

        r = await http.get(f"/v1/jobs/{job_id}")
        assert r.json()["status"] == "SUCCEEDED" and r.json()["runner_id"] == runner_id
        assert r.json()["outputs"][0]["data"] == [3, 5, 7]
