# ruff: noqa: F403, F405 - fixtures and helpers come from input_fixtures
"""Issue 12 item 7: no control or bidi characters in upload paths, Idempotency-Keys, tensor
names, key names, runner names and labels (422 naming the field and the character)."""

from __future__ import annotations

import hashlib

import httpx
import pytest
from input_fixtures import *

UNSAFE = ["\u202e", "\u0085", "\u009b", "\u2066", "\u200b", "\x7f", "\x1b", "\u2028"]


def spec(path: str, data: bytes = b"x") -> dict[str, object]:
    return {"path": path, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


@pytest.mark.parametrize("char", UNSAFE)
async def test_upload_paths_refuse_control_and_bidi(
    client: httpx.AsyncClient,
    auth_headers: TokenFor,
    char: str,
) -> None:
    acme = await auth_headers("user", "acme")
    body = {"files": [spec("config.pbtxt"), spec(f"1/model{char}yp.py")]}
    r = await client.post("/v1/models/m1/versions", json=body, headers=acme)
    err = assert_error(r, 422, "invalid_request")
    assert err["details"][0]["field"] == "files[1].path"
    assert f"U+{ord(char):04X}" in err["message"]


@pytest.mark.parametrize("key", ["abc\x01def", "k\x7f", "k\u0085", "k\u202e"])
async def test_idempotency_key_refuses_control_bytes(
    client: httpx.AsyncClient, model: dict[str, str], key: str
) -> None:
    raw = key.encode("latin-1", "ignore") if key.isascii() else key.encode("utf-8")
    headers = [(k.encode(), v.encode()) for k, v in model.items()]
    headers.append((b"idempotency-key", raw))
    r = await client.post("/v1/jobs", json=add_sub_job(), headers=headers)
    err = assert_error(r, 422, "invalid_request")
    assert err["details"][0]["field"] == "Idempotency-Key"
    listed = (await client.get("/v1/jobs", headers=model)).json()["jobs"]
    assert listed == []  # nothing stored


async def test_names_and_labels_refuse_control_and_bidi(
    client: httpx.AsyncClient,
    auth_headers: TokenFor,
    model: dict[str, str],
) -> None:
    admin = await auth_headers("admin", "default")
    r = await client.post(
        "/v1/admin/api-keys",
        json={"tenant": "acme", "role": "user", "name": "ops\u202etxt.exe"},
        headers=admin,
    )
    assert_error(r, 422, "invalid_request")
    r = await client.post("/v1/admin/join-tokens", json={"labels": {"a\x00": "b"}}, headers=admin)
    assert_error(r, 422, "invalid_request")
    r = await client.post("/v1/admin/join-tokens", json={}, headers=admin)
    token = r.json()["join_token"]
    r = await client.post("/v1/runners/register", json={"join_token": token, "name": "h\nfake"})
    assert_error(r, 422, "invalid_request")
    job = add_sub_job()
    job["inputs"][0]["name"] = "INPUT0\u202e"
    assert_error(await client.post("/v1/jobs", json=job, headers=model), 422, "invalid_request")
