"""Fixtures of the input-strictness tests (tests/security/test_input_*.py): the in-process
app of tests/control_plane/api (settings -> stores -> services -> app -> client), a pushed
add_sub model and a registered runner. Test modules take them with
``from input_fixtures import *``."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from gpufleet import signing

from tests.control_plane.api.conftest import (
    TokenFor,
    api_key,
    app,
    assert_error,
    auth_headers,
    client,
    services,
)
from tests.control_plane.api.helpers import add_sub_job, push_model

__all__ = [
    "TokenFor",
    "add_sub_job",
    "api_key",
    "app",
    "assert_error",
    "auth_headers",
    "client",
    "model",
    "register_runner",
    "services",
    "signed_post",
]


@pytest.fixture
async def model(client: httpx.AsyncClient, auth_headers: TokenFor) -> dict[str, str]:
    """add_sub pushed and READY for tenant acme; the headers of its user."""
    user = await auth_headers("user", "acme")
    await push_model(client, user)
    return user


async def register_runner(client: httpx.AsyncClient, admin: dict[str, str]) -> dict[str, str]:
    """A registered runner: ``{"id", "secret"}``."""
    r = await client.post("/v1/admin/join-tokens", headers=admin, json={})
    assert r.status_code == 201, r.text
    r = await client.post(
        "/v1/runners/register", json={"join_token": r.json()["join_token"], "name": "h1"}
    )
    assert r.status_code == 201, r.text
    return {"id": r.json()["runner_id"], "secret": r.json()["secret"]}


async def signed_post(
    client: httpx.AsyncClient, runner: dict[str, str], action: str, body: dict[str, Any]
) -> httpx.Response:
    path = f"/v1/runners/{runner['id']}/{action}"
    raw = json.dumps(body).encode()
    h = signing.sign_headers(runner["id"], runner["secret"], "POST", path, body=raw)
    return await client.post(path, content=raw, headers={**h, "Content-Type": "application/json"})
