"""Helpers shared by API and integration tests: push a model directory, sign runner calls."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import httpx
from gpufleet import signing

REPO = Path(__file__).resolve().parents[3]
ADD_SUB = REPO / "model_repository" / "add_sub"


def add_sub_job(**extra: Any) -> dict[str, Any]:
    return {
        "model": "add_sub",
        "inputs": [
            {"name": "INPUT0", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]},
            {"name": "INPUT1", "datatype": "FP32", "shape": [1, 4], "data": [1, 1, 1, 1]},
        ],
        **extra,
    }


def add_sub_outputs() -> list[dict[str, Any]]:
    return [
        {"name": "OUTPUT0", "datatype": "FP32", "shape": [1, 4], "data": [2, 3, 4, 5]},
        {"name": "OUTPUT1", "datatype": "FP32", "shape": [1, 4], "data": [0, 1, 2, 3]},
    ]


async def push_model(
    client: httpx.AsyncClient,
    headers: dict[str, str],
    model_dir: Path = ADD_SUB,
    salt: str = "",
) -> dict[str, Any]:
    """Upload config.pbtxt and version 1 of ``model_dir`` through the API; return the commit.
    The same content again returns the same version; a ``salt`` (a comment added to each
    ``.py`` file) makes it the next one."""
    files = {
        p.relative_to(model_dir).as_posix(): p.read_bytes()
        + (f"\n# {salt}\n".encode() if salt and p.suffix == ".py" else b"")
        for p in sorted(model_dir.rglob("*"))
        if p.is_file() and (p.name == "config.pbtxt" or p.parent.name.isdigit())
    }
    specs = [
        {"path": k, "size": len(v), "sha256": hashlib.sha256(v).hexdigest()}
        for k, v in files.items()
    ]
    r = await client.post(
        f"/v1/models/{model_dir.name}/versions", headers=headers, json={"files": specs}
    )
    assert r.status_code in (200, 201), r.text
    created = r.json()
    async with httpx.AsyncClient() as bucket:
        for up in created["uploads"]:
            put = await bucket.put(up["url"], content=files[up["path"]], headers=up["headers"])
            assert put.status_code == 200, put.text
    r = await client.post(
        f"/v1/models/{model_dir.name}/versions/{created['version']}/commit",
        headers=headers,
        json={},
    )
    assert r.status_code == 200, r.text
    return dict(r.json())


async def signed_post(
    client: httpx.AsyncClient, runner_id: str, secret: str, path: str, body: dict[str, Any]
) -> httpx.Response:
    """POST a JSON body signed as runner ``runner_id``."""
    raw = json.dumps(body).encode()
    h = signing.sign_headers(runner_id, secret, "POST", path, body=raw)
    return await client.post(path, content=raw, headers={**h, "Content-Type": "application/json"})
