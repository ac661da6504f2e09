"""Model files near each region (docs/regions.md): a deployment's ``region_buckets`` makes
runners of a mapped region fetch from their region's copy; new versions are copied there at
commit. On the embedded store (a region's bucket is a prefix of the one blob root) and on
DynamoDB + S3 (moto; a second bucket)."""

from __future__ import annotations

import hashlib
import uuid
from typing import Any

import httpx
import pytest

from tests.conftest import STORE_KINDS
from tests.control_plane.api.conftest import TokenFor, assert_error
from tests.control_plane.api.helpers import push_model
from tests.control_plane.api.test_deployments import gpu, register


@pytest.fixture
def settings(settings: Any) -> Any:
    return settings.model_copy(update={"placement_interval_s": 0.001, "implicit_max_replicas": 0})


async def fetched(want: dict[str, Any]) -> None:
    """Every file URL of a desired model serves the committed bytes."""
    async with httpx.AsyncClient() as bucket:
        for f in want["files"]:
            got = await bucket.get(f["url"])
            assert got.status_code == 200, f["url"]
            assert hashlib.sha256(got.content).hexdigest() == f["sha256"]


@pytest.mark.parametrize("store_kind", STORE_KINDS)
async def test_runners_fetch_from_their_regions_copy(
    client: httpx.AsyncClient, auth_headers: TokenFor, store_kind: str, request: Any
) -> None:
    location = f"eu-models-{uuid.uuid4().hex[:8]}"
    if store_kind == "dynamodb":
        request.getfixturevalue("aws")[1].create_bucket(Bucket=location)
    admin = await auth_headers("admin", "default")
    user = await auth_headers("user", "acme")
    await push_model(client, user)
    url = "/v1/models/add_sub/deployment"
    bad = {"region_buckets": {"eu-west-1": "no spaces allowed"}}
    err = assert_error(await client.put(url, headers=user, json=bad), 422, "invalid_request")
    assert err["details"][0]["field"] == "region_buckets.eu-west-1"
    spec = {"min_replicas": 2, "max_replicas": 2, "region_buckets": {"eu-west-1": location}}
    r = await client.put(url, headers=user, json=spec)
    assert r.status_code == 200, r.text
    assert r.json()["desired"]["region_buckets"] == {"eu-west-1": location}
    eu = await register(client, admin, "eu-1", "eu-west-1")
    us = await register(client, admin, "us-1", "us-east-1")
    await eu.heartbeat([gpu(16000)], [])
    (want_eu,) = (await eu.heartbeat([gpu(16000)], []))["desired_models"]
    (want_us,) = (await us.heartbeat([gpu(16000)], []))["desired_models"]
    await fetched(want_eu)
    await fetched(want_us)
    eu_urls = {f["url"] for f in want_eu["files"]}
    us_urls = {f["url"] for f in want_us["files"]}
    assert all(location in u for u in eu_urls), eu_urls  # the region's copy
    assert not any(location in u for u in us_urls), us_urls  # unmapped: the home bucket
    # a new version is copied at its commit: the eu runner gets it from its region's copy
    await push_model(client, user, salt="v2")
    answer = await eu.heartbeat([gpu(16000)], [])
    (want_v2,) = [m for m in answer["desired_models"] if m["version"] == "2"]
    assert all(location in f["url"] for f in want_v2["files"])
    await fetched(want_v2)
    # deleting version 1 removes its region copy too (version 2's stays)
    v1_urls = [f["url"] for f in want_eu["files"]]
    r = await client.delete("/v1/models/add_sub/versions/1", headers=user)
    assert r.status_code in (200, 204), r.text
    async with httpx.AsyncClient() as bucket:
        for u in v1_urls:
            assert (await bucket.get(u)).status_code in (403, 404), u
    await fetched(want_v2)
