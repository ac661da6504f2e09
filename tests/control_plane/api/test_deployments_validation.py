"""Upload validation over HTTP: every example model passes; bad uploads are 422 naming the field."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.control_plane.api.conftest import TokenFor, assert_error
from tests.control_plane.api.helpers import push_model

REPOSITORY = Path(__file__).resolve().parents[3] / "model_repository"
EXAMPLES = sorted(p for p in REPOSITORY.iterdir() if (p / "config.pbtxt").is_file())


@pytest.fixture
def settings(settings: Any) -> Any:
    return settings.model_copy(update={"model_max_files": 4, "model_max_bytes": 64 * 1024})


def spec(path: str, data: bytes) -> dict[str, Any]:
    return {"path": path, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def test_the_repository_has_the_examples() -> None:
    assert {p.name for p in EXAMPLES} >= {"add_sub", "upper_case", "iris_classifier"}


@pytest.mark.parametrize("model_dir", EXAMPLES, ids=[p.name for p in EXAMPLES])
async def test_every_example_model_passes_upload_validation(
    client: httpx.AsyncClient, auth_headers: TokenFor, model_dir: Path
) -> None:
    user = await auth_headers("user", "acme")
    view = await push_model(client, user, model_dir)
    assert view["state"] == "READY" and view["name"] == model_dir.name
    assert view["inputs"] and view["outputs"]


async def _create(
    client: httpx.AsyncClient, headers: dict[str, str], files: list[dict[str, Any]]
) -> httpx.Response:
    return await client.post("/v1/models/m/versions", headers=headers, json={"files": files})


async def test_bad_uploads_are_422_with_the_field(
    client: httpx.AsyncClient, auth_headers: TokenFor
) -> None:
    user = await auth_headers("user", "acme")
    config = b'name: "m"\nbackend: "python"\n'
    model = b"x"

    def details(r: httpx.Response) -> list[str]:
        err = assert_error(r, 422, "invalid_request")
        return [d["field"] for d in err["details"]]

    traversal = [spec("config.pbtxt", config), spec("1/../../etc/passwd", model)]
    assert details(await _create(client, user, traversal)) == ["files[1].path"]
    absolute = [spec("config.pbtxt", config), spec("/1/model.py", model)]
    assert details(await _create(client, user, absolute)) == ["files[1].path"]
    many = [spec("config.pbtxt", config)] + [spec(f"1/f{i}.py", model) for i in range(4)]
    r = await _create(client, user, many)
    assert details(r) == ["files"] and "at most 4" in r.json()["error"]["message"]
    big = [spec("config.pbtxt", config), {**spec("1/model.py", model), "size": 70_000}]
    assert details(await _create(client, user, big)) == ["files"]

    # an unknown backend passes the layout check and is refused at commit, naming the field
    bad_config = b'name: "m"\nbackend: "pyhton"\n'
    files = {"config.pbtxt": bad_config, "1/model.py": model}
    r = await _create(client, user, [spec(p, b) for p, b in files.items()])
    assert r.status_code == 201, r.text
    async with httpx.AsyncClient() as bucket:
        for up in r.json()["uploads"]:
            assert (await bucket.put(up["url"], content=files[up["path"]])).status_code == 200
    r = await client.post("/v1/models/m/versions/1/commit", headers=user, json={})
    assert details(r) == ["config.pbtxt.backend"]
    got = await client.get("/v1/models/m", headers=user)
    assert [v["state"] for v in got.json()["versions"]] == ["UPLOADING"]
