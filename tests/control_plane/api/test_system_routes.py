"""Health, metrics and the OpenAPI document."""

from __future__ import annotations

import re
from typing import Any

import httpx
import pytest
from starlette.routing import Route

from control_plane.app import create_app
from control_plane.composition import build_services
from control_plane.storage.stores import Stores, dynamo_stores
from tests.conftest import STORE_KINDS, free_port


async def test_openapi_covers_every_route(client: httpx.AsyncClient, app: Any) -> None:
    doc = (await client.get("/openapi.json")).json()
    assert doc["openapi"].startswith("3.")
    routes = [r for r in app.routes if isinstance(r, Route)]
    assert len(routes) >= 25
    for r in routes:
        for method in r.methods - {"HEAD"}:
            path = re.sub(r"{([^}:]+):[^}]+}", r"{\1}", r.path)  # {key:path} -> {key}
            op = doc["paths"][path][method.lower()]
            assert op["summary"] and op["responses"]
    schemes = doc["components"]["securitySchemes"]
    assert schemes["bearerAuth"]["scheme"] == "bearer"
    assert schemes["runnerSignature"]["name"] == "X-Gpufleet-Signature"
    hb = doc["paths"]["/v1/runners/{runner_id}/heartbeat"]["post"]
    assert set(hb["security"][0]) == {
        "runnerId",
        "runnerTimestamp",
        "runnerNonce",
        "runnerSignature",
    }
    job = doc["paths"]["/v1/jobs"]["post"]
    assert job["requestBody"]["content"]["application/json"]["schema"]["$ref"].startswith(
        "#/components/schemas/JobRequest"
    )
    assert "202" in job["responses"]
    for schema_ref in ("JobRequest", "LeaseResponse", "ErrorBody"):
        assert any(k.startswith(schema_ref) for k in doc["components"]["schemas"])


async def test_health_ok(client: httpx.AsyncClient) -> None:
    r = await client.get("/v1/health")
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "ok" and body["version"] and body["api_version"] == "v1"
    assert set(body["checks"].values()) == {"ok"}


@pytest.mark.parametrize("store_kind", STORE_KINDS)
async def test_health_degraded_when_storage_unreachable(
    settings: Any, store_kind: str, request: pytest.FixtureRequest
) -> None:
    if store_kind == "dynamodb":  # endpoints nobody listens on
        dead = f"http://127.0.0.1:{free_port()}"
        s = settings.model_copy(update={"dynamodb_endpoint_url": dead, "s3_endpoint_url": dead})
        services = build_services(s, dynamo_stores(s))
    else:  # the embedded store closed under it: every read fails
        stores: Stores = request.getfixturevalue("stores")
        s = settings
        services = build_services(s, stores)
        stores.close()
    app = create_app(s, services)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://cp") as c:
        r = await c.get("/v1/health")
    assert r.status_code == 503
    body = r.json()
    assert body["status"] == "degraded" and body["api_version"] == "v1"
    assert any(v.startswith("error") for v in body["checks"].values())


async def test_metrics_exposition(client: httpx.AsyncClient, auth_headers: Any) -> None:
    h = await auth_headers("user")
    await client.get("/v1/jobs", headers=h)
    await client.get("/v1/jobs/job_does_not_exist", headers=h)
    text = (await client.get("/metrics", headers=await auth_headers("admin"))).text
    count = "gpufleet_http_request_duration_seconds_count"
    assert f'{count}{{method="GET",route="/v1/jobs",status="200"}} 1.0' in text
    assert 'route="/v1/jobs/{job_id}",status="404"' in text
    assert "gpufleet_queue_depth" in text


async def test_api_docs_are_served_from_the_pinned_bundle(client: httpx.AsyncClient) -> None:
    """``/`` points to ``/docs``; the page loads ReDoc from this server (no CDN) and reads
    ``/openapi.json``; the bundle is the committed one (its sha256 pinned in the code)."""
    import hashlib

    from control_plane.api.routes_docs import REDOC_SHA256

    r = await client.get("/")
    assert r.status_code == 307 and r.headers["location"] == "/docs"
    page = await client.get("/docs")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert 'src="/docs/redoc.standalone.js"' in page.text
    assert 'spec-url="/openapi.json"' in page.text and "http" not in page.text.split("<body>")[1]
    script = await client.get("/docs/redoc.standalone.js")
    assert script.status_code == 200 and "javascript" in script.headers["content-type"]
    assert hashlib.sha256(script.content).hexdigest() == REDOC_SHA256
    assert (await client.get("/openapi.json")).json()["openapi"].startswith("3.")


async def test_request_id_comes_back_and_is_made_when_missing(
    client: httpx.AsyncClient,
) -> None:
    r = await client.get("/v1/health", headers={"X-Request-ID": "trace-42"})
    assert r.headers["x-request-id"] == "trace-42"
    made = (await client.get("/v1/health")).headers["x-request-id"]
    assert made.startswith("req_") and len(made) == 20
    bad = await client.get("/v1/health", headers={"X-Request-ID": "x" * 300})
    assert bad.headers["x-request-id"].startswith("req_")  # unsafe ids are replaced
    err = await client.get("/v1/jobs", headers={"X-Request-ID": "trace-43"})
    assert err.status_code == 401 and err.headers["x-request-id"] == "trace-43"
