"""Every bad input gets the v1 error shape and stores nothing."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from control_plane.composition import Services
from control_plane.storage.stores import Stores
from tests.conftest import STORE_KINDS
from tests.control_plane.api.conftest import TokenFor, assert_error
from tests.helpers.stored import stored_items


@pytest.mark.parametrize(
    "body, field",
    [
        (b'{"api_key": ', "body"),
        (b"[1, 2]", "body"),
        (b'{"api_key": 12345678}', "api_key"),
        (b'{"api_key": "gf_abcdefgh", "extra": 1}', "extra"),
        (b'{"api_key": "gf_abcdefgh", "api_version": "v2"}', "api_version"),
        (b"{}", "api_key"),
    ],
)
async def test_bad_bodies_on_public_route(
    client: httpx.AsyncClient, stores: Stores, settings: Any, body: bytes, field: str
) -> None:
    before = stored_items(stores, settings)
    r = await client.post(
        "/v1/auth/token", content=body, headers={"Content-Type": "application/json"}
    )
    err = assert_error(r, 422, "invalid_request")
    assert field in [d["field"] for d in err["details"]]
    assert stored_items(stores, settings) == before


@pytest.mark.parametrize(
    "job, field",
    [
        (
            {"model": "add_sub", "inputs": [{"name": "A", "datatype": "FP32", "shape": "x"}]},
            "inputs.0.shape",
        ),
        ({"model": "add_sub", "inputs": []}, "inputs"),
        (
            {"model": "add_sub", "inputs": [{"name": "A", "datatype": "FP99", "shape": [1]}]},
            "inputs.0.datatype",
        ),
        (
            {
                "model": "add_sub",
                "priority": "high",
                "inputs": [{"name": "A", "datatype": "FP32", "shape": [1]}],
            },
            "priority",
        ),
        (
            {
                "model": "add_sub",
                "surprise": 1,
                "inputs": [{"name": "A", "datatype": "FP32", "shape": [1]}],
            },
            "surprise",
        ),
        (
            {
                "api_version": "v2",
                "model": "add_sub",
                "inputs": [{"name": "A", "datatype": "FP32", "shape": [1]}],
            },
            "api_version",
        ),
    ],
)
async def test_bad_jobs_rejected_and_not_stored(
    client: httpx.AsyncClient,
    auth_headers: TokenFor,
    stores: Stores,
    settings: Any,
    job: dict[str, Any],
    field: str,
) -> None:
    h = await auth_headers("user")
    before = stored_items(stores, settings)
    err = assert_error(await client.post("/v1/jobs", json=job, headers=h), 422, "invalid_request")
    assert field in [d["field"] for d in err["details"]]
    assert stored_items(stores, settings) == before


async def test_malformed_json_job(client: httpx.AsyncClient, auth_headers: TokenFor) -> None:
    h = {**await auth_headers("user"), "Content-Type": "application/json"}
    assert_error(
        await client.post("/v1/jobs", content=b"{not json", headers=h), 422, "invalid_request"
    )
    assert_error(
        await client.post("/v1/jobs", content=b"\xff\xfe", headers=h), 422, "invalid_request"
    )


@pytest.mark.parametrize("store_kind", STORE_KINDS)
async def test_body_over_limit_by_content_length(
    client: httpx.AsyncClient, stores: Stores, settings: Any
) -> None:
    before = stored_items(stores, settings)
    big = b'{"api_key": "' + b"x" * (settings.max_body_bytes + 10) + b'"}'
    r = await client.post("/v1/auth/token", content=big)
    assert_error(r, 413, "payload_too_large")
    assert stored_items(stores, settings) == before


async def test_body_over_limit_streamed(client: httpx.AsyncClient, settings: Any) -> None:
    """Chunked upload without Content-Length: counted while streaming."""

    async def chunks() -> Any:
        for _ in range(settings.max_body_bytes // 65536 + 2):
            yield b"x" * 65536

    r = await client.post("/v1/auth/token", content=chunks())
    assert_error(r, 413, "payload_too_large")


async def test_query_validation(client: httpx.AsyncClient, auth_headers: TokenFor) -> None:
    h = await auth_headers("user")
    err = assert_error(
        await client.get("/v1/jobs/job_x?wait_s=31", headers=h), 422, "invalid_request"
    )
    assert err["details"][0]["field"] == "wait_s"
    assert_error(await client.get("/v1/jobs/job_x?wait_s=abc", headers=h), 422, "invalid_request")
    assert_error(await client.get("/v1/jobs?limit=0", headers=h), 422, "invalid_request")
    assert_error(await client.get("/v1/jobs?status=DONE", headers=h), 422, "invalid_request")


async def test_unknown_route_and_method(client: httpx.AsyncClient) -> None:
    assert_error(await client.get("/v1/nope"), 404, "not_found")
    assert_error(await client.get("/v1"), 404, "not_found")
    assert (await client.get("/")).headers["location"] == "/docs"  # not a 404 (issue 15)
    r = await client.put("/v1/auth/token", json={})
    assert_error(r, 405, "method_not_allowed")
    assert "POST" in r.headers["allow"]


async def test_success_bodies_carry_api_version(
    client: httpx.AsyncClient, auth_headers: TokenFor, services: Services
) -> None:
    h = await auth_headers("admin", "default")
    for path in ["/v1/health", "/v1/jobs", "/v1/runners", "/v1/models", "/v1/auth/jwks"]:
        r = await client.get(path, headers=h)
        assert r.status_code == 200, (path, r.text)
        assert r.json()["api_version"] == "v1"
