# ruff: noqa: F403, F405 - fixtures and helpers come from input_fixtures
"""Issue 12 items 3 and 7 (model names): a refused upload claims nothing, another tenant's
name answers 404 (not a 409 that tells it exists), the owner releases an empty name, and a
name is matched in full (``add_sub%0a`` is not ``add_sub\\n``)."""

from __future__ import annotations

import hashlib

import httpx
from input_fixtures import *

CONFIG = b'name: "m1"\nbackend: "python"\nmax_batch_size: 0\n'


def spec(path: str, data: bytes) -> dict[str, object]:
    return {"path": path, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


async def test_refused_upload_claims_no_name(
    client: httpx.AsyncClient,
    auth_headers: TokenFor,
) -> None:
    acme = await auth_headers("user", "acme")
    globex = await auth_headers("user", "globex")
    bad = {"files": [spec("config.pbtxt", CONFIG), spec("../escape.py", b"x")]}
    r = await client.post("/v1/models/m1/versions", json=bad, headers=acme)
    assert_error(r, 422, "invalid_request")
    r = await client.get("/v1/models/m1", headers=acme)
    assert_error(r, 404, "not_found")
    good = {"files": [spec("config.pbtxt", CONFIG), spec("1/model.py", b"x")]}
    r = await client.post("/v1/models/m1/versions", json=good, headers=globex)
    assert r.status_code == 201, r.text  # the name was never taken by acme's refused try


async def test_other_tenants_name_is_404_not_409(
    client: httpx.AsyncClient,
    auth_headers: TokenFor,
) -> None:
    acme = await auth_headers("user", "acme")
    globex = await auth_headers("user", "globex")
    good = {"files": [spec("config.pbtxt", CONFIG), spec("1/model.py", b"x")]}
    assert (await client.post("/v1/models/m1/versions", json=good, headers=acme)).status_code == 201
    r = await client.post("/v1/models/m1/versions", json=good, headers=globex)
    err = assert_error(r, 404, "not_found")
    assert "another tenant" not in err["message"]
    unknown = await client.post(
        "/v1/models/never-made/versions", json={"files": []}, headers=globex
    )
    assert unknown.status_code == 422  # a free name: validated, not "not found"
    assert_error(await client.delete("/v1/models/m1", headers=globex), 404, "not_found")


async def test_owner_releases_an_empty_name(
    client: httpx.AsyncClient,
    auth_headers: TokenFor,
) -> None:
    acme = await auth_headers("user", "acme")
    globex = await auth_headers("user", "globex")
    good = {"files": [spec("config.pbtxt", CONFIG), spec("1/model.py", b"x")]}
    r = await client.post("/v1/models/m1/versions", json=good, headers=acme)
    assert r.status_code == 201, r.text  # UPLOADING, never committed
    r = await client.delete("/v1/models/m1", headers=acme)
    assert_error(r, 409, "conflict")  # a version remains
    r = await client.delete("/v1/models/m1/versions/1", headers=acme)
    assert r.status_code == 200, r.text
    r = await client.delete("/v1/models/m1", headers=acme)
    assert r.status_code == 200 and r.json() == {
        "api_version": "v1",
        "name": "m1",
        "released": True,
    }
    r = await client.post("/v1/models/m1/versions", json=good, headers=globex)
    assert r.status_code == 201, r.text  # free again, for anyone


async def test_model_names_match_in_full(
    client: httpx.AsyncClient,
    auth_headers: TokenFor,
) -> None:
    acme = await auth_headers("user", "acme")
    good = {"files": [spec("config.pbtxt", CONFIG), spec("1/model.py", b"x")]}
    r = await client.post("/v1/models/add_sub%0A/versions", json=good, headers=acme)
    assert_error(r, 422, "invalid_request")
    listed = (await client.get("/v1/models", headers=acme)).json()["models"]
    assert listed == []
    r = await client.get("/v2/models/add_sub%0A", headers=acme)
    assert r.status_code == 404 and r.json()["code"] == "model_not_found"
