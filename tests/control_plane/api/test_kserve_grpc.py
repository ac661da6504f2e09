"""``tritonclient.grpc`` (sync and aio) pointed at the control plane's KServe gRPC server,
unchanged but for the bearer token in ``headers=``. The app runs under uvicorn and the gRPC
server in its own event loop, both on one ``Services`` and on 127.0.0.1; infers are durable
jobs completed by a signed fake runner computing add_sub."""

from __future__ import annotations

import asyncio
import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as triton
import tritonclient.grpc.aio as triton_aio
import uvicorn
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from control_plane.api.kserve_grpc import KServeGrpcServer
from control_plane.app import create_app
from control_plane.composition import Services, build_services
from control_plane.storage.stores import Stores
from tests.conftest import free_port
from tests.control_plane.api.helpers import ADD_SUB, push_model
from tests.helpers.fake_runner import FakeRunner, JobError, add_sub
from tests.helpers.kserve_runner import bearer, with_kserve_routes

INT_MODEL = "add_sub_int"


@dataclass
class Fleet:
    http: str  # host:port of the app (runners, model uploads)
    grpc: str  # host:port of the KServe gRPC server
    services: Services


def _serve_http(app: Any) -> Iterator[str]:
    port = free_port()
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


def _serve_grpc(services: Services) -> Iterator[str]:
    """``KServeGrpcServer`` on port 0, in an event loop of its own thread."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    server = KServeGrpcServer(services, "127.0.0.1", 0)
    port = asyncio.run_coroutine_threadsafe(server.start(), loop).result(timeout=20)
    assert port > 0
    own = services.settings.grpc_server == "gpufleet"
    assert (server._h2 is not None, server._server is not None) == (own, not own)
    yield f"127.0.0.1:{port}"
    asyncio.run_coroutine_threadsafe(server.stop(grace_s=1.0), loop).result(timeout=20)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(timeout=10)
    loop.close()


@pytest.fixture(params=["gpufleet", "grpcio"])
def fleet(settings: Any, stores: Stores, request: pytest.FixtureRequest) -> Iterator[Fleet]:
    """Every test on both gRPC servers (``grpc_server``: gpufleet's own HTTP/2 server,
    grpcio's aio server)."""
    settings = settings.model_copy(update={"grpc_server": request.param})
    services = build_services(settings, stores)
    for http in _serve_http(with_kserve_routes(create_app(settings, services))):
        stores.set_public_url(f"http://{http}")  # the embedded store's blob URLs
        for address in _serve_grpc(services):
            yield Fleet(http, address, services)


def _int_model(tmp_path: Path) -> Path:
    """add_sub with INT32 tensors, under another name."""
    model = tmp_path / INT_MODEL
    shutil.copytree(ADD_SUB, model)
    config = model / "config.pbtxt"
    text = config.read_text().replace('name: "add_sub"', f'name: "{INT_MODEL}"')
    config.write_text(text.replace("TYPE_FP32", "TYPE_INT32"))
    return model


@pytest.fixture
async def tokens(fleet: Fleet, tmp_path: Path) -> dict[str, str]:
    """add_sub (FP32) and add_sub_int (INT32) pushed by the user of tenant acme; the
    ``authorization`` values of that user and of a viewer; a runner join token."""
    auth = fleet.services.auth
    async with httpx.AsyncClient(base_url=f"http://{fleet.http}", timeout=30) as c:
        user = await bearer(c, auth.issue_api_key("acme", "user", "u").api_key)
        viewer = await bearer(c, auth.issue_api_key("acme", "viewer", "v").api_key)
        admin = await bearer(c, auth.issue_api_key("ops", "admin", "a").api_key)
        await push_model(c, user)
        await push_model(c, user, _int_model(tmp_path))
        r = await c.post("/v1/admin/join-tokens", headers=admin, json={})
        assert r.status_code in (200, 201), r.text
    return {
        "user": user["Authorization"],
        "viewer": viewer["Authorization"],
        "join": r.json()["join_token"],
    }


@pytest.fixture
def client(fleet: Fleet) -> Iterator[triton.InferenceServerClient]:
    c = triton.InferenceServerClient(url=fleet.grpc)
    yield c
    c.close()


def add_sub_or_fail(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """add_sub, failing the job (as Triton would) when INPUT0 starts with a negative value."""
    if inputs["INPUT0"].reshape(-1)[0] < 0:
        raise JobError("triton_error", "model raised: negative input")
    return add_sub(inputs)


def runner(fleet: Fleet, join: str) -> FakeRunner:
    models = [("add_sub", "1"), (INT_MODEL, "1")]
    return FakeRunner(f"http://{fleet.http}", join, models=models, compute=add_sub_or_fail)


def inputs(a: np.ndarray, b: np.ndarray, datatype: str = "FP32") -> list[triton.InferInput]:
    out = []
    for name, value in (("INPUT0", a), ("INPUT1", b)):
        t = triton.InferInput(name, list(value.shape), datatype)
        t.set_data_from_numpy(value)
        out.append(t)
    return out


def status_of(exc: pytest.ExceptionInfo[InferenceServerException]) -> str:
    return str(exc.value.status())


A = np.array([[1, 2, 3, 4], [5, 6, 7, 8]], dtype=np.float32)
B = np.array([[1, 1, 1, 1], [0.5, 0.5, 0.5, 0.5]], dtype=np.float32)


# --------------------------------------------------------------------------- server, models


def test_server_and_model_rpcs(
    client: triton.InferenceServerClient, tokens: dict[str, str]
) -> None:
    h = {"authorization": tokens["user"]}
    assert client.is_server_live(headers=h)
    assert client.is_server_ready(headers=h)
    meta = client.get_server_metadata(headers=h, as_json=True)
    assert meta["name"] == "gpufleet" and meta["version"]

    model = client.get_model_metadata("add_sub", headers=h, as_json=True)
    assert model["name"] == "add_sub" and model["versions"] == ["1"]
    assert model["platform"] == "python"
    assert model["inputs"][0] == {"name": "INPUT0", "datatype": "FP32", "shape": ["-1", "4"]}
    assert [o["name"] for o in model["outputs"]] == ["OUTPUT0", "OUTPUT1"]
    pinned = client.get_model_metadata(INT_MODEL, "1", headers=h)
    assert pinned.inputs[1].datatype == "INT32" and list(pinned.inputs[1].shape) == [-1, 4]

    config = client.get_model_config("add_sub", headers=h).config
    assert config.name == "add_sub" and config.max_batch_size == 8 and config.backend == "python"
    assert [t.name for t in config.input] == ["INPUT0", "INPUT1"]
    assert config.input[0].data_type == triton.model_config_pb2.TYPE_FP32
    assert list(config.input[0].dims) == [4]

    assert client.is_model_ready("add_sub", headers=h)
    assert client.is_model_ready("add_sub", "1", headers=h)
    assert not client.is_model_ready("add_sub", "2", headers=h)
    assert not client.is_model_ready("nope", headers=h)

    for call in (
        lambda: client.get_model_metadata("nope", headers=h),
        lambda: client.get_model_config("add_sub", "2", headers=h),
        lambda: client.get_model_metadata("../etc", headers=h),
    ):
        with pytest.raises(InferenceServerException) as missing:
            call()
        assert status_of(missing) == "StatusCode.NOT_FOUND"
        assert "model '" in str(missing.value.message())


# --------------------------------------------------------------------------- infer


def test_infer(fleet: Fleet, client: triton.InferenceServerClient, tokens: dict[str, str]) -> None:
    h = {"authorization": tokens["user"]}
    ai = np.array([[1, -2, 3, 2_000_000_000]], dtype=np.int32)
    bi = np.array([[10, 20, -30, 5]], dtype=np.int32)
    with runner(fleet, tokens["join"]) as fake:
        result = client.infer("add_sub", inputs(A, B), request_id="r-1", headers=h)
        np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), A + B)
        np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), A - B)
        assert result.as_numpy("OUTPUT0").dtype == np.float32
        response = result.get_response()
        assert response.id == "r-1" and response.model_name == "add_sub"
        assert response.model_version == "1"
        assert response.parameters["job_id"].string_param.startswith("job_")
        assert len(response.raw_output_contents) == 2  # raw, as Triton answers

        result = client.infer(INT_MODEL, inputs(ai, bi, "INT32"), model_version="1", headers=h)
        assert result.as_numpy("OUTPUT0").dtype == np.int32
        np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), ai + bi)
        np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), ai - bi)

        only = [triton.InferRequestedOutput("OUTPUT1")]
        result = client.infer("add_sub", inputs(A, B), outputs=only, headers=h)
        assert [o.name for o in result.get_response().outputs] == ["OUTPUT1"]
        assert result.as_numpy("OUTPUT0") is None
        np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), A - B)

        with pytest.raises(InferenceServerException) as failed:
            client.infer("add_sub", inputs(-A, B), headers=h)
        assert status_of(failed) == "StatusCode.INTERNAL"
        assert failed.value.message() == "model raised: negative input"
    assert fake.errors == []
    assert len(fake.completed) == 4  # the failed job included


def test_infer_with_typed_contents(fleet: Fleet, tokens: dict[str, str]) -> None:
    """Inputs in ``contents`` (what non-tritonclient KServe clients send) instead of raw."""
    request = service_pb2.ModelInferRequest(model_name=INT_MODEL, id="typed")
    for name, values in (("INPUT0", [1, 2, 3, 4]), ("INPUT1", [4, 3, 2, 1])):
        t = request.inputs.add(name=name, datatype="INT32", shape=[1, 4])
        t.contents.int_contents.extend(values)
    request.outputs.add(name="OUTPUT0")
    metadata = (("authorization", tokens["user"]),)
    with grpc.insecure_channel(fleet.grpc) as channel, runner(fleet, tokens["join"]):
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        response = stub.ModelInfer(request, metadata=metadata, timeout=60)
        assert response.id == "typed" and [o.name for o in response.outputs] == ["OUTPUT0"]
        out = np.frombuffer(response.raw_output_contents[0], dtype="<i4")
        np.testing.assert_array_equal(out, [5, 5, 5, 5])

        request.inputs[1].contents.fp32_contents.append(1.0)  # the wrong field for INT32
        with pytest.raises(grpc.RpcError) as wrong:
            stub.ModelInfer(request, metadata=metadata, timeout=60)
        assert wrong.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "input 'INPUT1'" in str(wrong.value.details())


def test_infer_errors(client: triton.InferenceServerClient, tokens: dict[str, str]) -> None:
    """Refused before any job is queued (no runner needed)."""
    h = {"authorization": tokens["user"]}
    with pytest.raises(InferenceServerException) as missing:
        client.infer("nope", inputs(A, B), headers=h)
    assert status_of(missing) == "StatusCode.NOT_FOUND"
    assert missing.value.message().startswith("model 'nope'")

    with pytest.raises(InferenceServerException) as shape:
        client.infer("add_sub", inputs(A[:, :3], B[:, :3]), headers=h)
    assert status_of(shape) == "StatusCode.INVALID_ARGUMENT"
    assert "'INPUT0'" in shape.value.message()

    wrong_name = inputs(A, B)
    wrong_name[1] = triton.InferInput("INPUT9", list(B.shape), "FP32")
    wrong_name[1].set_data_from_numpy(B)
    with pytest.raises(InferenceServerException) as name:
        client.infer("add_sub", wrong_name, headers=h)
    assert status_of(name) == "StatusCode.INVALID_ARGUMENT"
    assert "INPUT9" in name.value.message()

    with pytest.raises(InferenceServerException) as dtype:
        client.infer("add_sub", inputs(A.astype(np.int32), B.astype(np.int32), "INT32"), headers=h)
    assert status_of(dtype) == "StatusCode.INVALID_ARGUMENT"
    assert "'INPUT0'" in dtype.value.message()


# --------------------------------------------------------------------------- auth


def test_auth(client: triton.InferenceServerClient, tokens: dict[str, str]) -> None:
    for headers in (None, {"authorization": "Bearer not-a-jwt"}, {"authorization": "Basic x"}):
        with pytest.raises(InferenceServerException) as refused:
            client.is_server_live(headers=headers)
        assert status_of(refused) == "StatusCode.UNAUTHENTICATED", headers
        assert refused.value.message()
        with pytest.raises(InferenceServerException) as refused:
            client.infer("add_sub", inputs(A, B), headers=headers)
        assert status_of(refused) == "StatusCode.UNAUTHENTICATED", headers

    viewer = {"authorization": tokens["viewer"]}
    assert client.is_model_ready("add_sub", headers=viewer)  # reading is allowed
    with pytest.raises(InferenceServerException) as denied:
        client.infer("add_sub", inputs(A, B), headers=viewer)
    assert status_of(denied) == "StatusCode.PERMISSION_DENIED"
    assert "jobs:write" in denied.value.message()


def test_unimplemented_rpcs(client: triton.InferenceServerClient, tokens: dict[str, str]) -> None:
    h = {"authorization": tokens["user"]}
    for call in (
        lambda: client.get_model_repository_index(headers=h),
        lambda: client.load_model("add_sub", headers=h),
        lambda: client.get_system_shared_memory_status(headers=h),
        lambda: client.get_inference_statistics(headers=h),
    ):
        with pytest.raises(InferenceServerException) as unimplemented:
            call()
        assert status_of(unimplemented) == "StatusCode.UNIMPLEMENTED"
        assert "not implemented by gpufleet" in unimplemented.value.message()


def test_stream_infer_is_unimplemented(fleet: Fleet, tokens: dict[str, str]) -> None:
    request = service_pb2.ModelInferRequest(model_name="add_sub")
    with grpc.insecure_channel(fleet.grpc) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        replies = stub.ModelStreamInfer(
            iter([request]), metadata=(("authorization", tokens["user"]),), timeout=30
        )
        with pytest.raises(grpc.RpcError) as unimplemented:
            next(replies)
    assert unimplemented.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert "use ModelInfer" in str(unimplemented.value.details())


def test_oversized_request(fleet: Fleet, tokens: dict[str, str]) -> None:
    """Over ``max_body_bytes``: refused by gRPC itself, as the HTTP body limit does."""
    big = np.zeros((1, fleet.services.settings.max_body_bytes // 4 + 1), dtype=np.float32)
    client = triton.InferenceServerClient(url=fleet.grpc)
    try:
        with pytest.raises(InferenceServerException) as refused:
            client.infer("add_sub", inputs(big, big), headers={"authorization": tokens["user"]})
        assert status_of(refused) == "StatusCode.RESOURCE_EXHAUSTED"
    finally:
        client.close()


# --------------------------------------------------------------------------- aio


async def test_aio_client(fleet: Fleet, tokens: dict[str, str]) -> None:
    h = {"authorization": tokens["user"]}
    client = triton_aio.InferenceServerClient(url=fleet.grpc)
    try:
        assert await client.is_server_ready(headers=h)
        assert (await client.get_model_metadata("add_sub", headers=h)).name == "add_sub"
        with runner(fleet, tokens["join"]) as fake:
            results = await asyncio.gather(
                *(
                    client.infer("add_sub", inputs(A * i, B), request_id=str(i), headers=h)
                    for i in range(1, 4)
                )
            )
        for i, result in enumerate(results, start=1):
            assert result.get_response().id == str(i)
            np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), A * i + B)
        assert fake.errors == [] and len(fake.completed) == 3
    finally:
        await client.close()


def test_request_id_comes_back_in_trailing_metadata(fleet: Fleet, tokens: dict[str, str]) -> None:
    """As over HTTP: the caller's x-request-id (when safe) or a new one, also on failures."""
    with grpc.insecure_channel(fleet.grpc) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        auth = ("authorization", tokens["user"])
        _, call = stub.ServerLive.with_call(
            service_pb2.ServerLiveRequest(),
            metadata=(auth, ("x-request-id", "trace-9")),
            timeout=30,
        )
        assert dict(call.trailing_metadata())["x-request-id"] == "trace-9"
        _, call = stub.ServerLive.with_call(
            service_pb2.ServerLiveRequest(),
            metadata=(auth, ("x-request-id", "bad id!")),
            timeout=30,
        )
        assert dict(call.trailing_metadata())["x-request-id"].startswith("req_")
        with pytest.raises(grpc.RpcError) as err:
            stub.ModelMetadata(
                service_pb2.ModelMetadataRequest(name="nope"),
                metadata=(auth, ("x-request-id", "trace-10")),
                timeout=30,
            )
        assert dict(err.value.trailing_metadata())["x-request-id"] == "trace-10"
