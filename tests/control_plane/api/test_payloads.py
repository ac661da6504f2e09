"""Large tensors through the bucket, on the wire: ``POST /v1/payloads`` → presigned PUT →
job input with ``data_ref`` (checked: exists, same tenant, size = datatype x shape) → the
lease's presigned GET → the runner's presigned PUT of large outputs → ``outputs_ref`` →
``outputs_url`` on the job. The app runs in process; the bucket is the embedded store's blob
directory, served by this app over a loopback socket (the round trip also on S3: moto over
real HTTP)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from gpufleet.tensors import decode_outputs, encode_outputs

from tests.conftest import STORE_KINDS
from tests.control_plane.api.conftest import TokenFor, assert_error
from tests.control_plane.api.helpers import push_model, signed_post

SCALE = Path(__file__).resolve().parents[2] / "fixtures" / "models" / "scale"


def scale_job(ref: str, n: int, **extra: Any) -> dict[str, Any]:
    tensor = {"name": "INPUT0", "datatype": "FP32", "shape": [n], "data_ref": ref}
    return {"model": "scale", "inputs": [tensor], **extra}


async def upload(client: httpx.AsyncClient, headers: dict[str, str], data: bytes) -> str:
    r = await client.post("/v1/payloads", headers=headers, json={"size": len(data)})
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["api_version"] == "v1" and body["method"] == "PUT"
    assert body["ref"].startswith("pl_")
    async with httpx.AsyncClient() as bucket:
        put = await bucket.put(body["url"], content=data, headers=body["headers"])
    assert put.status_code == 200, put.text
    return str(body["ref"])


@pytest.fixture
async def user(client: httpx.AsyncClient, auth_headers: TokenFor) -> dict[str, str]:
    headers = await auth_headers("user", "acme")
    await push_model(client, headers, SCALE)
    return headers


@pytest.fixture
async def runner(client: httpx.AsyncClient, auth_headers: TokenFor) -> dict[str, str]:
    admin = await auth_headers("admin", "default")
    r = await client.post("/v1/admin/join-tokens", headers=admin, json={})
    assert r.status_code == 201, r.text
    r = await client.post(
        "/v1/runners/register", json={"join_token": r.json()["join_token"], "name": "p1"}
    )
    assert r.status_code == 201, r.text
    return {"id": r.json()["runner_id"], "secret": r.json()["secret"]}


async def lease(client: httpx.AsyncClient, runner: dict[str, str]) -> dict[str, Any]:
    path = f"/v1/runners/{runner['id']}/lease"
    body = {"models": [{"name": "scale", "version": "1"}], "max_jobs": 1, "wait_s": 2}
    r = await signed_post(client, runner["id"], runner["secret"], path, body)
    assert r.status_code == 200, r.text
    (job,) = r.json()["jobs"]
    return dict(job)


async def complete(
    client: httpx.AsyncClient, runner: dict[str, str], job: dict[str, Any], **body: Any
) -> httpx.Response:
    path = f"/v1/runners/{runner['id']}/jobs/{job['id']}/complete"
    done = {"lease_token": job["lease_token"], "status": "SUCCEEDED", **body}
    return await signed_post(client, runner["id"], runner["secret"], path, done)


@pytest.mark.parametrize("store_kind", STORE_KINDS)
async def test_large_input_and_output_travel_through_presigned_urls(
    client: httpx.AsyncClient, user: dict[str, str], runner: dict[str, str]
) -> None:
    x = np.arange(300_000, dtype=np.float32)  # 1.2 MB raw, far over the 256 KiB JSON limit
    ref = await upload(client, user, x.astype("<f4").tobytes())
    r = await client.post("/v1/jobs", headers=user, json=scale_job(ref, x.size))
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]

    job = await lease(client, runner)
    assert job["id"] == job_id and job["inputs"][0]["data_ref"] == ref
    assert "data" not in job["inputs"][0] or job["inputs"][0]["data"] is None
    async with httpx.AsyncClient() as bucket:
        got = await bucket.get(job["input_urls"]["INPUT0"])
        assert got.status_code == 200
        np.testing.assert_array_equal(np.frombuffer(got.content, dtype="<f4"), x)
        target = job["outputs_upload"]
        assert target["max_inline_bytes"] == 256 * 1024
        assert target["ref"].startswith(f"results/{job_id}/")
        y = 2 * x + 1
        put = await bucket.put(target["url"], content=encode_outputs([("OUTPUT0", "FP32", y)]))
        assert put.status_code == 200, put.text

    r = await complete(client, runner, job, outputs_ref=target["ref"])
    assert r.status_code == 200, r.text
    view = (await client.get(f"/v1/jobs/{job_id}", headers=user)).json()
    assert view["status"] == "SUCCEEDED" and view["outputs"] is None
    async with httpx.AsyncClient() as bucket:
        stored = await bucket.get(view["outputs_url"])
    assert stored.status_code == 200
    np.testing.assert_array_equal(decode_outputs(stored.content)["OUTPUT0"], y)


async def test_data_ref_is_checked_before_the_job_is_queued(
    client: httpx.AsyncClient, user: dict[str, str], auth_headers: TokenFor
) -> None:
    ref = await upload(client, user, b"\0" * 16)  # 4 FP32
    bad = [
        (scale_job("pl_" + "0" * 32, 4), "names no uploaded payload"),
        (scale_job("../payloads/acme/x", 4), "names no uploaded payload"),
        (scale_job(ref, 5), "payload is 16 bytes, FP32[5] needs 20"),
    ]
    for body, message in bad:
        r = await client.post("/v1/jobs", headers=user, json=body)
        err = assert_error(r, 422, "invalid_request")
        assert message in err["message"], err
        assert err["details"][0]["field"] == "inputs[0].data_ref", err
    r = await client.post("/v1/jobs", headers=user, json=scale_job(ref, 4))
    assert r.status_code == 202, r.text

    # another tenant cannot use it (an admin elsewhere may use acme's model, not its payload)
    other = await auth_headers("admin", "globex")
    r = await client.post("/v1/jobs", headers=other, json=scale_job(ref, 4))
    assert "names no uploaded payload" in assert_error(r, 422, "invalid_request")["message"]


async def test_outputs_ref_must_be_this_leases_uploaded_object(
    client: httpx.AsyncClient, user: dict[str, str], runner: dict[str, str]
) -> None:
    ref = await upload(client, user, b"\0" * 16)
    r = await client.post("/v1/jobs", headers=user, json=scale_job(ref, 4))
    job_id = r.json()["id"]
    job = await lease(client, runner)
    r = await complete(client, runner, job, outputs_ref=f"results/{job_id}/other/outputs.bin")
    assert "outputs_upload.ref" in assert_error(r, 422, "invalid_request")["message"]
    r = await complete(client, runner, job, outputs_ref=job["outputs_upload"]["ref"])
    assert "nothing was uploaded" in assert_error(r, 422, "invalid_request")["message"]
    view = (await client.get(f"/v1/jobs/{job_id}", headers=user)).json()
    assert view["status"] == "RUNNING"  # nothing committed


async def test_payload_route_auth_validation_and_schema(
    client: httpx.AsyncClient, auth_headers: TokenFor
) -> None:
    assert_error(await client.post("/v1/payloads", json={"size": 10}), 401, "unauthorized")
    viewer = await auth_headers("viewer", "acme")
    r = await client.post("/v1/payloads", headers=viewer, json={"size": 10})
    assert_error(r, 403, "forbidden")
    user = await auth_headers("user", "acme")
    for body in ({"size": 0}, {"size": 10, "extra": 1}, {}, {"size": 6 * 1024**3}):
        r = await client.post("/v1/payloads", headers=user, json=body)
        assert_error(r, 422, "invalid_request")
    schema = (await client.get("/openapi.json")).json()
    op = schema["paths"]["/v1/payloads"]["post"]
    assert "201" in op["responses"]
