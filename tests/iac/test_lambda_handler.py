"""control_plane.lambda_handler.handler invoked with API Gateway HTTP API (v2.0) events, its
settings taken from ``GPUFLEET_*`` environment variables, as the compute stack sets them."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from control_plane import lambda_handler
from control_plane.settings import Settings
from scripts.create_admin_key import create_admin_key


@dataclass
class FakeContext:
    """The attributes of a Lambda context object that adapters read."""

    function_name: str = "gpufleet-api"
    aws_request_id: str = "req-1"
    memory_limit_in_mb: int = 1024

    def get_remaining_time_in_millis(self) -> int:
        return 30_000


def http_event(
    method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
) -> dict[str, Any]:
    """An API Gateway HTTP API event, payload format 2.0, as the $default route sends it."""
    raw = json.dumps(body) if body is not None else None
    hdrs = {"host": "abc123.execute-api.us-east-1.amazonaws.com", "user-agent": "test"}
    if raw is not None:
        hdrs["content-type"] = "application/json"
        hdrs["content-length"] = str(len(raw))
    hdrs |= {k.lower(): v for k, v in (headers or {}).items()}
    return {
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": path,
        "rawQueryString": "",
        "headers": hdrs,
        "requestContext": {
            "accountId": "123456789012",
            "apiId": "abc123",
            "domainName": hdrs["host"],
            "domainPrefix": "abc123",
            "http": {
                "method": method,
                "path": path,
                "protocol": "HTTP/1.1",
                "sourceIp": "127.0.0.1",
                "userAgent": "test",
            },
            "requestId": "r1",
            "routeKey": "$default",
            "stage": "$default",
            "time": "22/Nov/2026:08:00:00 +0000",
            "timeEpoch": 1795334400000,
        },
        "body": raw,
        "isBase64Encoded": False,
    }


def body_of(response: dict[str, Any]) -> Any:
    raw = response["body"]
    if response.get("isBase64Encoded"):
        raw = base64.b64decode(raw).decode()
    return json.loads(raw)


@pytest.fixture
def lambda_env(settings: Settings, aws: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[Settings]:
    """GPUFLEET_* variables for moto-backed tables; a fresh container before and after."""
    env = {
        "GPUFLEET_DYNAMODB_ENDPOINT_URL": settings.dynamodb_endpoint_url,
        "GPUFLEET_S3_ENDPOINT_URL": settings.s3_endpoint_url,
        "GPUFLEET_TABLE_PREFIX": settings.table_prefix,
        "GPUFLEET_BUCKET": settings.bucket,
        "GPUFLEET_AWS_REGION": "us-east-1",
        "GPUFLEET_MAX_WAIT_S": "25",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, str(value))
    monkeypatch.delenv("GPUFLEET_JWT_SECRET", raising=False)  # generated, kept in the tables
    # A Lambda container's main thread has its own event loop; give this test one too (an
    # earlier async test may have left a closed loop behind).
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    lambda_handler.current.cache_clear()
    yield settings.model_copy(update={"jwt_secret": None})
    lambda_handler.current.cache_clear()
    asyncio.set_event_loop(None)
    loop.close()


def test_health(lambda_env: Settings) -> None:
    r = lambda_handler.handler(http_event("GET", "/v1/health"), FakeContext())
    assert r["statusCode"] == 200, r
    body = body_of(r)
    assert body["api_version"] == "v1" and body["status"] == "ok"


def test_settings_come_from_the_environment_once_per_container(lambda_env: Settings) -> None:
    first = lambda_handler.current()
    assert first.app.state.services.settings.table_prefix == lambda_env.table_prefix
    assert first.app.state.services.settings.max_wait_s == 25
    assert lambda_handler.current() is first


def test_token_and_job_submit(lambda_env: Settings) -> None:
    ctx = FakeContext()
    key = create_admin_key(lambda_env, tenant="acme").api_key
    r = lambda_handler.handler(http_event("POST", "/v1/auth/token", {"api_key": key}), ctx)
    assert r["statusCode"] == 200, r
    token = body_of(r)["access_token"]
    job = {
        "model": "add_sub",
        "inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [1], "data": [1.0]}],
    }
    auth = {"Authorization": f"Bearer {token}"}
    r = lambda_handler.handler(http_event("POST", "/v1/jobs", job, auth), ctx)
    assert r["statusCode"] == 404, r
    assert body_of(r)["error"]["code"] == "model_not_found"
    r = lambda_handler.handler(http_event("POST", "/v1/jobs", job), ctx)
    assert r["statusCode"] == 401, r
    assert body_of(r)["error"]["code"] == "unauthorized"


def test_scheduled_sweep_event(lambda_env: Settings) -> None:
    r = lambda_handler.handler({"gpufleet": "sweep"}, FakeContext())
    assert set(r) == {"swept", "webhooks_delivered", "capacity_decided"}
    assert r["capacity_decided"] == 0  # no pool
    assert all(isinstance(v, int) for v in r["swept"].values())


def test_sweep_event_is_recognised_exactly() -> None:
    assert lambda_handler.is_sweep_event({"gpufleet": "sweep"})
    assert not lambda_handler.is_sweep_event({"gpufleet": "other"})
    assert not lambda_handler.is_sweep_event(http_event("GET", "/v1/health"))
