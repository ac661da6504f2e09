# ruff: noqa: F403, F405 - fixtures and helpers come from input_fixtures
"""Issue 12 item 4: deeply nested JSON is a 422, never a crash (RecursionError, 500, a
reset connection), on authenticated routes and on the unauthenticated ones."""

from __future__ import annotations

import logging

import httpx
import pytest
from input_fixtures import *

DEEP = 10_000


@pytest.mark.parametrize("path", ["/v1/auth/token", "/v1/runners/register", "/v1/auth/refresh"])
@pytest.mark.parametrize("wrap", ["bare", "in_field"])
async def test_deep_json_without_a_token_is_422(
    client: httpx.AsyncClient, path: str, wrap: str, caplog: pytest.LogCaptureFixture
) -> None:
    nested = "[" * DEEP + "]" * DEEP
    body = nested if wrap == "bare" else '{"api_key": ' + nested + "}"
    with caplog.at_level(logging.WARNING):
        r = await client.post(path, content=body, headers={"Content-Type": "application/json"})
    err = assert_error(r, 422, "invalid_request")
    assert "nests deeper than" in err["message"] and err["details"][0]["field"] == "body"
    assert not [rec for rec in caplog.records if rec.levelno >= logging.ERROR], caplog.text


async def test_deep_json_in_a_job_and_a_kserve_request_is_422(
    client: httpx.AsyncClient, model: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    deep_params = {"parameters": {"x": "[" * DEEP + "]" * DEEP}}  # a string: not nesting
    r = await client.post("/v1/jobs", json=add_sub_job(**deep_params), headers=model)
    assert r.status_code == 202, r.text
    body = '{"model": "add_sub", "inputs": [], "parameters": {"x": ' + "[" * DEEP
    body += "]" * DEEP + "}}"
    with caplog.at_level(logging.WARNING):
        r = await client.post("/v1/jobs", content=body, headers=model)
        assert_error(r, 422, "invalid_request")
        v2 = '{"inputs": ' + "[" * DEEP + "]" * DEEP + "}"
        r = await client.post("/v2/models/add_sub/infer", content=v2, headers=model)
        assert r.status_code == 422 and r.json()["code"] == "invalid_request", r.text
        r = await client.post(
            "/v2/models/add_sub/infer",
            content=v2 + "\x00\x00",
            headers={**model, "Inference-Header-Content-Length": str(len(v2))},
        )
        assert r.status_code == 422, r.text
    assert not [rec for rec in caplog.records if rec.levelno >= logging.ERROR], caplog.text


async def test_moderate_nesting_still_parses(client: httpx.AsyncClient) -> None:
    """60 levels (under the limit) reach the model, which refuses the type, not the depth."""
    body = '{"api_key": ' + "[" * 60 + "]" * 60 + "}"
    r = await client.post("/v1/auth/token", content=body)
    err = assert_error(r, 422, "invalid_request")
    assert "nests" not in err["message"]
