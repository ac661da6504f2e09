"""The OpenAPI document declares the new auth routes and fields (issue 12)."""

from __future__ import annotations

import httpx


async def test_openapi_declares_rotation_join_limits_and_pool_tokens(
    client: httpx.AsyncClient,
) -> None:
    doc = (await client.get("/openapi.json")).json()
    paths, schemas = doc["paths"], doc["components"]["schemas"]
    rotate = paths["/v1/admin/api-keys/{key_id}/rotate"]["post"]
    assert "requestBody" in rotate and "200" in rotate["responses"]
    assert "post" in paths["/v1/runners/{runner_id}/rotate-secret"]
    assert "201" in paths["/v1/pools/{name}/join-token"]["post"]["responses"]
    names = " ".join(schemas)
    assert "ApiKeyRotate" in names and "ApiKeyRotated" in names
    join_create = next(v for k, v in schemas.items() if k.startswith("JoinTokenCreate"))
    assert "max_uses" in join_create["properties"]
    heartbeat = next(v for k, v in schemas.items() if k.startswith("HeartbeatResponse"))
    assert "new_secret" in heartbeat["properties"]
    runner_view = next(v for k, v in schemas.items() if k.startswith("RunnerView"))
    assert {"join_token", "secret_set_at", "secret_rotation_pending"} <= set(
        runner_view["properties"]
    )
