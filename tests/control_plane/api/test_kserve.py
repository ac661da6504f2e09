"""The KServe v2 endpoint in process (httpx ASGITransport): health, metadata, ready, config,
infer (JSON and Triton's binary extension) through the real queue with a signed runner,
and the error bodies that tritonclient reads."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any

import httpx
import numpy as np
import pytest

from control_plane.api.kserve import ROUTES
from control_plane.app import create_app, routes
from control_plane.composition import Services
from control_plane.storage.stores import Stores
from tests.conftest import serve_blobs_through
from tests.control_plane.api.helpers import push_model
from tests.helpers.clock import FakeClock
from tests.helpers.fake_runner import JobError
from tests.helpers.kserve_runner import AsyncRunner, bearer, with_kserve_routes

HEADER = "Inference-Header-Content-Length"
A = [1.0, 2.0, 3.0, 4.0]
B = [0.5, 0.5, 1.0, 1.0]


@pytest.fixture
def app(settings: Any, services: Services, stores: Stores, request: pytest.FixtureRequest) -> Any:
    app = with_kserve_routes(create_app(settings, services))
    return serve_blobs_through(app, stores, request)


@dataclass
class Fleet:
    user: dict[str, str]
    admin: dict[str, str]
    runner: AsyncRunner


@pytest.fixture
async def fleet(client: httpx.AsyncClient, services: Services) -> Fleet:
    """add_sub pushed by a user of tenant acme; a registered (not yet serving) runner."""
    user = await bearer(client, services.auth.issue_api_key("acme", "user", "u").api_key)
    admin = await bearer(client, services.auth.issue_api_key("ops", "admin", "a").api_key)
    await push_model(client, user)
    return Fleet(user, admin, await AsyncRunner.register(client, admin))


def json_request(**extra: Any) -> dict[str, Any]:
    return {
        "inputs": [
            {"name": "INPUT0", "datatype": "FP32", "shape": [1, 4], "data": A},
            {"name": "INPUT1", "datatype": "FP32", "shape": [1, 4], "data": [B]},  # nested
        ],
        **extra,
    }


def v2_error(r: httpx.Response, status: int, code: str) -> str:
    """The /v2 error body: top-level ``error`` string plus api-v1 ``code``."""
    assert r.status_code == status, r.text
    body = r.json()
    assert body["api_version"] == "v1"
    assert body["code"] == code
    assert isinstance(body["error"], str) and body["error"]
    return str(body["error"])


def split(r: httpx.Response) -> tuple[dict[str, Any], bytes]:
    n = int(r.headers[HEADER])
    return json.loads(r.content[:n]), r.content[n:]


def test_kserve_routes_are_wired() -> None:
    """create_app serves the /v2 routes (control_plane.app.routes() lists kserve.ROUTES)."""
    table = routes()
    assert all(r in table for r in ROUTES)


async def test_server_endpoints_need_a_token(client: httpx.AsyncClient, fleet: Fleet) -> None:
    for path in ("/v2/health/live", "/v2/health/ready", "/v2", "/v2/models/add_sub"):
        v2_error(await client.get(path), 401, "unauthorized")
    r = await client.get("/v2/health/live", headers=fleet.user)
    assert r.status_code == 200 and r.json()["live"] is True
    r = await client.get("/v2/health/ready", headers=fleet.user)
    assert r.status_code == 200 and r.json()["ready"] is True
    meta = (await client.get("/v2", headers=fleet.user)).json()
    assert meta["name"] == "gpufleet" and meta["extensions"] == ["binary_tensor_data"]
    assert meta["version"]


async def test_server_not_ready_when_storage_fails(
    client: httpx.AsyncClient, fleet: Fleet, services: Services
) -> None:
    def down() -> None:
        raise ConnectionError("tables unreachable")

    services.checks["tables"] = down
    message = v2_error(await client.get("/v2/health/ready", headers=fleet.user), 503, "unavailable")
    assert "tables" in message
    assert (await client.get("/v2/health/live", headers=fleet.user)).status_code == 200


async def test_model_metadata_ready_and_config(client: httpx.AsyncClient, fleet: Fleet) -> None:
    for path in ("/v2/models/add_sub", "/v2/models/add_sub/versions/1"):
        r = await client.get(path, headers=fleet.user)
        assert r.status_code == 200, r.text
        meta = r.json()
        assert meta["name"] == "add_sub" and meta["versions"] == ["1"]
        assert meta["platform"] == "python"
        assert meta["inputs"] == [
            {"name": "INPUT0", "datatype": "FP32", "shape": [-1, 4]},
            {"name": "INPUT1", "datatype": "FP32", "shape": [-1, 4]},
        ]
        assert [o["name"] for o in meta["outputs"]] == ["OUTPUT0", "OUTPUT1"]
        r = await client.get(path + "/ready", headers=fleet.user)
        assert r.status_code == 200 and r.json()["ready"] is True
        cfg = (await client.get(path + "/config", headers=fleet.user)).json()
        assert cfg["name"] == "add_sub" and cfg["max_batch_size"] == 8
        assert cfg["backend"] == "python"
    for path in (
        "/v2/models/nope",
        "/v2/models/add_sub/versions/2",
        "/v2/models/add_sub/versions/x",
    ):
        v2_error(await client.get(path, headers=fleet.user), 404, "model_not_found")
        v2_error(await client.get(path + "/ready", headers=fleet.user), 404, "model_not_found")
    other = await bearer(client, (await _key(client, fleet, "other")))
    v2_error(await client.get("/v2/models/add_sub", headers=other), 404, "model_not_found")
    v2_error(await client.get("/v2/models/add_sub/ready", headers=other), 404, "model_not_found")


async def _key(client: httpx.AsyncClient, fleet: Fleet, tenant: str) -> str:
    body = {"tenant": tenant, "role": "user", "name": "x"}
    r = await client.post("/v1/admin/api-keys", headers=fleet.admin, json=body)
    assert r.status_code in (200, 201), r.text
    return str(r.json()["api_key"])


async def test_infer_json(client: httpx.AsyncClient, fleet: Fleet) -> None:
    async with fleet.runner.serving():
        r = await client.post(
            "/v2/models/add_sub/infer", headers=fleet.user, json=json_request(id="req-7")
        )
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/json")
    assert HEADER not in r.headers
    body = r.json()
    assert body["model_name"] == "add_sub" and body["model_version"] == "1"
    assert body["id"] == "req-7"
    job_id = body["parameters"]["job_id"]
    assert fleet.runner.completed == [job_id]
    out = {o["name"]: o for o in body["outputs"]}
    assert out["OUTPUT0"] == {
        "name": "OUTPUT0",
        "datatype": "FP32",
        "shape": [1, 4],
        "data": [1.5, 2.5, 4.0, 5.0],
    }
    assert out["OUTPUT1"]["data"] == [0.5, 1.5, 2.0, 3.0]
    job = (await client.get(f"/v1/jobs/{job_id}", headers=fleet.user)).json()
    assert job["status"] == "SUCCEEDED"  # it ran as an ordinary job through the queue


async def test_infer_pinned_version_and_requested_output(
    client: httpx.AsyncClient, fleet: Fleet
) -> None:
    req = json_request(outputs=[{"name": "OUTPUT1"}])
    async with fleet.runner.serving():
        r = await client.post("/v2/models/add_sub/versions/1/infer", headers=fleet.user, json=req)
    assert r.status_code == 200, r.text
    body = r.json()
    assert "id" not in body
    assert [o["name"] for o in body["outputs"]] == ["OUTPUT1"]


async def test_infer_binary_in_and_out(client: httpx.AsyncClient, fleet: Fleet) -> None:
    a = np.array([A], dtype=np.float32)
    b = np.array([B], dtype=np.float32)
    head = {
        "id": "bin",
        "inputs": [
            {
                "name": "INPUT0",
                "datatype": "FP32",
                "shape": [1, 4],
                "parameters": {"binary_data_size": a.nbytes},
            },
            {
                "name": "INPUT1",
                "datatype": "FP32",
                "shape": [1, 4],
                "parameters": {"binary_data_size": b.nbytes},
            },
        ],
        "outputs": [
            {"name": "OUTPUT0", "parameters": {"binary_data": True}},
            {"name": "OUTPUT1", "parameters": {"binary_data": False}},
        ],
    }
    raw = json.dumps(head).encode()
    headers = {**fleet.user, HEADER: str(len(raw)), "Content-Type": "application/octet-stream"}
    async with fleet.runner.serving():
        r = await client.post(
            "/v2/models/add_sub/infer", headers=headers, content=raw + a.tobytes() + b.tobytes()
        )
        assert r.status_code == 200, r.text
        assert r.headers["content-type"] == "application/octet-stream"
        doc, tail = split(r)
        out = {o["name"]: o for o in doc["outputs"]}
        assert out["OUTPUT0"]["parameters"] == {"binary_data_size": 16}
        assert "data" not in out["OUTPUT0"]
        assert np.frombuffer(tail, dtype="<f4").tolist() == (a + b).reshape(-1).tolist()
        assert out["OUTPUT1"]["data"] == (a - b).reshape(-1).tolist()
        assert doc["id"] == "bin"
        assert fleet.runner.leased[0].inputs[1].data == B  # decoded, binary params dropped
        assert all(t.parameters is None for t in fleet.runner.leased[0].inputs)

        # binary_data_output: every output in binary, in the order listed
        req = json_request(parameters={"binary_data_output": True})
        r = await client.post("/v2/models/add_sub/infer", headers=fleet.user, json=req)
        doc, tail = split(r)
        sizes = [o["parameters"]["binary_data_size"] for o in doc["outputs"]]
        assert sizes == [16, 16]
        values = np.frombuffer(tail, dtype="<f4").reshape(2, 4)
        assert values.tolist() == [(a + b)[0].tolist(), (a - b)[0].tolist()]


async def test_binary_parameters_do_not_reach_the_job(
    client: httpx.AsyncClient, fleet: Fleet
) -> None:
    req = json_request(parameters={"binary_data_output": False, "custom": 3})
    req["outputs"] = [{"name": "OUTPUT0", "parameters": {"binary_data": False}}]
    async with fleet.runner.serving():
        r = await client.post("/v2/models/add_sub/infer", headers=fleet.user, json=req)
    assert r.status_code == 200, r.text
    (leased,) = fleet.runner.leased
    assert leased.id == r.json()["parameters"]["job_id"]
    assert leased.parameters == {"custom": 3}
    assert leased.outputs is not None and leased.outputs[0].parameters is None
    assert all(t.parameters is None for t in leased.inputs)


@pytest.mark.parametrize(("code", "status"), [("triton_error", 500), ("invalid_input", 400)])
async def test_failed_job(client: httpx.AsyncClient, fleet: Fleet, code: str, status: int) -> None:
    def broken(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        raise JobError(code, "model raised: division by zero")

    fleet.runner.compute = broken
    async with fleet.runner.serving():
        r = await client.post("/v2/models/add_sub/infer", headers=fleet.user, json=json_request())
    assert v2_error(r, status, code) == "model raised: division by zero"
    assert r.json()["details"]["status"] == "FAILED"


async def test_not_finished_in_time_is_504(
    client: httpx.AsyncClient, fleet: Fleet, settings: Any
) -> None:
    settings.infer_wait_s = 1.0
    fleet.runner.delay_s = 2.5  # leased at once, but runs longer than the caller waits
    async with fleet.runner.serving():
        r = await client.post("/v2/models/add_sub/infer", headers=fleet.user, json=json_request())
        message = v2_error(r, 504, "timeout")
        job_id = r.json()["details"]["job_id"]
        assert job_id in message and r.json()["details"]["status"] == "RUNNING"
        # The 504 does not cancel the job: it finishes and its result can be fetched later.
        job = (await client.get(f"/v1/jobs/{job_id}?wait_s=10", headers=fleet.user)).json()
    assert job["status"] == "SUCCEEDED"


@pytest.mark.parametrize("now", ["fake"], indirect=True)
async def test_nobody_serving_times_out_in_the_queue(
    client: httpx.AsyncClient, fleet: Fleet, settings: Any, services: Services, now: FakeClock
) -> None:
    settings.infer_wait_s = 0.4  # no runner is serving: the job's ttl_s is 1 s
    r = await client.post("/v2/models/add_sub/infer", headers=fleet.user, json=json_request())
    message = v2_error(r, 504, "timeout")
    job_id = r.json()["details"]["job_id"]
    assert job_id in message and r.json()["details"]["status"] == "QUEUED"
    now.advance(1.2)  # past the job's ttl_s
    await asyncio.to_thread(services.jobs.sweep)  # the lifespan's sweeper, run now
    job = (await client.get(f"/v1/jobs/{job_id}", headers=fleet.user)).json()
    assert job["status"] == "TIMED_OUT"  # not run later for a caller that has gone


async def test_outputs_stored_in_the_bucket(
    client: httpx.AsyncClient, fleet: Fleet, settings: Any
) -> None:
    settings.max_inline_bytes = 200  # inputs (~150 B of JSON) inline, outputs in the bucket
    req = json_request(parameters={"binary_data_output": True})
    req["inputs"][0]["data"] = [0.1, 0.2, 0.3, 0.4]
    req["inputs"][1]["data"] = [0.1, 0.1, 0.1, 0.1]
    async with fleet.runner.serving():
        r = await client.post("/v2/models/add_sub/infer", headers=fleet.user, json=req)
    assert r.status_code == 200, r.text
    doc, tail = split(r)
    job = (await client.get(f"/v1/jobs/{doc['parameters']['job_id']}", headers=fleet.user)).json()
    assert job["outputs"] is None and job["outputs_url"]
    got = np.frombuffer(tail, dtype="<f4").reshape(2, 4)
    a = np.array([0.1, 0.2, 0.3, 0.4], dtype=np.float32)
    b = np.float32(0.1)
    assert got.tolist() == [(a + b).tolist(), (a - b).tolist()]


async def test_request_errors(client: httpx.AsyncClient, fleet: Fleet) -> None:
    url = "/v2/models/add_sub/infer"
    req = json_request()
    req["inputs"][0]["name"] = "INPUTX"
    assert "INPUTX" in v2_error(
        await client.post(url, headers=fleet.user, json=req), 422, "invalid_request"
    )
    req = json_request()
    req["inputs"][1]["shape"] = [1, 5]
    assert "INPUT1" in v2_error(
        await client.post(url, headers=fleet.user, json=req), 422, "invalid_request"
    )
    v2_error(await client.post(url, headers=fleet.user, content=b"{nope"), 422, "invalid_request")
    r = await client.post(url, headers=fleet.user, json={"inputs": [], "junk": 1})
    fields = {d["field"] for d in r.json()["details"]}
    assert v2_error(r, 422, "invalid_request") and {"inputs", "junk"} <= fields
    # the binary part does not add up
    head = json.dumps(
        {
            "inputs": [
                {
                    "name": "INPUT0",
                    "datatype": "FP32",
                    "shape": [1, 4],
                    "parameters": {"binary_data_size": 16},
                }
            ]
        }
    ).encode()
    h = {**fleet.user, HEADER: str(len(head))}
    v2_error(await client.post(url, headers=h, content=head + b"\0" * 12), 422, "invalid_request")
    v2_error(await client.post(url, headers=h, content=head + b"\0" * 20), 422, "invalid_request")
    v2_error(
        await client.post(url, headers={**fleet.user, HEADER: "x"}, content=head),
        422,
        "invalid_request",
    )
    v2_error(
        await client.post("/v2/models/nope/infer", headers=fleet.user, json=json_request()),
        404,
        "model_not_found",
    )
    v2_error(await client.post(url, json=json_request()), 401, "unauthorized")
    viewer = await bearer(client, await _viewer_key(client, fleet))
    v2_error(await client.post(url, headers=viewer, json=json_request()), 403, "forbidden")


async def _viewer_key(client: httpx.AsyncClient, fleet: Fleet) -> str:
    body = {"tenant": "acme", "role": "viewer", "name": "v"}
    r = await client.post("/v1/admin/api-keys", headers=fleet.admin, json=body)
    return str(r.json()["api_key"])


async def test_openapi_documents_v2(client: httpx.AsyncClient) -> None:
    doc = (await client.get("/openapi.json")).json()
    op = doc["paths"]["/v2/models/{model}/versions/{version}/infer"]["post"]
    assert op["security"] == [{"bearerAuth": []}]
    assert {p["name"] for p in op["parameters"]} >= {"model", "version", HEADER}
    assert "/v2/health/live" in doc["paths"] and "/v2/models/{model}/ready" in doc["paths"]
