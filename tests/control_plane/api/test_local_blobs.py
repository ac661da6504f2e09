"""The local blob store's URLs over a real socket: signatures, limits, checksums, atomic
writes, file modes; plus the store's own key checks and lifecycle sweep."""

from __future__ import annotations

import base64
import hashlib
import os
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

import httpx
import pytest
from starlette.applications import Starlette

from control_plane.api import routes_blobs
from control_plane.api.openapi import build_openapi
from control_plane.api.routes_blobs import Unsatisfiable, parse_range
from control_plane.errors import Conflict, InvalidRequest, NotFound
from control_plane.storage.local_blobs import LocalBlobStore
from tests.contract.test_blob_stores import SIGNING_KEY
from tests.control_plane.api.conftest import assert_error
from tests.helpers.blob_host import serve_blobs


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(tmp_path: Path, clock: Clock) -> Iterator[LocalBlobStore]:
    s = LocalBlobStore(tmp_path / "blobs", "", SIGNING_KEY, max_object_bytes=4096, clock=clock)
    with serve_blobs(s):
        yield s


def with_query(url: str, **changes: str) -> str:
    parts = urlsplit(url)
    query = {k: v[0] for k, v in parse_qs(parts.query).items()} | changes
    return urlunsplit(parts._replace(query=urlencode(query)))


def leftovers(store: LocalBlobStore) -> list[str]:
    """Temp files anywhere under the root."""
    return [
        os.path.join(d, f) for d, _, files in os.walk(store.root) for f in files if ".gf-tmp-" in f
    ]


def test_expired_url_is_forbidden(store: LocalBlobStore, clock: Clock) -> None:
    store.put_json("a/x", 1)
    get_url, put_url = store.presign_get("a/x", 60), store.presign_put("a/y", 60)
    clock.now += 59
    assert httpx.get(get_url).status_code == 200
    clock.now += 2
    assert_error(httpx.get(get_url), 403, "forbidden")
    assert_error(httpx.put(put_url, content=b"late"), 403, "forbidden")
    assert store.head("a/y") is None


def test_tampered_url_is_forbidden(store: LocalBlobStore, clock: Clock) -> None:
    store.put_json("a/x", 1)
    store.put_json("a/other", 2)
    url = store.presign_get("a/x", 60)
    sig = parse_qs(urlsplit(url).query)["sig"][0]
    flipped = ("0" if sig[0] != "0" else "1") + sig[1:]
    assert_error(httpx.get(with_query(url, sig=flipped)), 403, "forbidden")
    assert_error(httpx.get(with_query(url, exp=str(int(clock.now) + 9999))), 403, "forbidden")
    assert_error(httpx.get(url.replace("/a/x?", "/a/other?")), 403, "forbidden")
    assert_error(httpx.get(with_query(url, sig="")), 403, "forbidden")
    assert_error(httpx.get(url.split("?")[0]), 403, "forbidden")  # no query at all
    other_key = LocalBlobStore(store.root, store.base_url, b"another-key-0123456789abcdef")
    assert_error(httpx.get(other_key.presign_get("a/x", 60)), 403, "forbidden")


def test_url_for_another_op_is_forbidden(store: LocalBlobStore) -> None:
    store.put_json("a/x", "old")
    get_url = store.presign_get("a/x", 60)
    assert_error(httpx.put(get_url, content=b"new"), 403, "forbidden")
    assert_error(httpx.put(with_query(get_url, op="put"), content=b"new"), 403, "forbidden")
    assert store.get_json("a/x") == "old"
    assert_error(httpx.get(store.presign_put("a/x", 60)), 403, "forbidden")
    upload_id = store.create_multipart("mp/k")
    part_url = store.presign_upload_part("mp/k", upload_id, 1, 60)
    assert_error(httpx.put(with_query(part_url, part="2"), content=b"p"), 403, "forbidden")
    assert_error(httpx.put(with_query(part_url, op="put"), content=b"p"), 403, "forbidden")
    assert httpx.put(part_url, content=b"p").status_code == 200


def test_head_on_a_get_url(store: LocalBlobStore) -> None:
    store.put_json("a/x", "12345")
    r = httpx.head(store.presign_get("a/x", 60))
    assert r.status_code == 200 and r.headers["content-length"] == "7" and r.content == b""


def test_no_bearer_token_needed_and_a_stray_one_ignored(store: LocalBlobStore) -> None:
    r = httpx.put(
        store.presign_put("a/x", 60), content=b"hi", headers={"Authorization": "Bearer junk"}
    )
    assert r.status_code == 200
    r = httpx.get(store.presign_get("a/x", 60), headers={"Authorization": "Bearer junk"})
    assert r.content == b"hi"


BAD_KEYS = [
    "../x",
    "a/../../x",
    "/etc/passwd",
    "a\\b",
    "a\x00b",
    "a\x1fb",
    "a\x7fb",
    "a//b",
    "./a",
    "a/",
    "",
    "a/..",
]


@pytest.mark.parametrize("key", BAD_KEYS)
def test_unsafe_keys_are_refused(store: LocalBlobStore, key: str) -> None:
    with pytest.raises(InvalidRequest):
        store.presign_put(key, 60)
    with pytest.raises(InvalidRequest):
        store.presign_get(key, 60)
    with pytest.raises(InvalidRequest):
        store.put_json(key, 1)
    with pytest.raises(InvalidRequest):
        store.head(key)
    with pytest.raises(InvalidRequest):
        store.create_multipart(key)


def test_traversal_over_http_is_refused_even_when_signed(
    store: LocalBlobStore, tmp_path: Path
) -> None:
    """A URL whose path decodes to ``..`` (signed with the real key) writes nothing."""
    key = "../escaped"
    exp = int(time.time()) + 60
    sig = store._sign("PUT", "put", key, exp, "", 0)
    url = f"{store.base_url}/v1/blobs/%2E%2E/escaped?op=put&exp={exp}&sig={sig}"
    assert_error(httpx.put(url, content=b"x"), 422, "invalid_request")
    assert not (store.root / "escaped").exists() and not (tmp_path / "escaped").exists()
    assert not list(store.root.parent.glob("**/escaped"))


def test_size_limit_413_stores_nothing(store: LocalBlobStore) -> None:
    store.put_json("big/x", "old")
    url = store.presign_put("big/x", 60)
    assert_error(httpx.put(url, content=b"x" * 5000), 413, "payload_too_large")

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted while streaming
        for _ in range(10):
            yield b"y" * 1000

    assert_error(httpx.put(url, content=chunks()), 413, "payload_too_large")
    assert store.get_json("big/x") == "old"
    upload_id = store.create_multipart("big/mp")
    part_url = store.presign_upload_part("big/mp", upload_id, 1, 60)
    assert_error(httpx.put(part_url, content=chunks()), 413, "payload_too_large")
    assert leftovers(store) == []
    assert httpx.put(url, content=b"z" * 4096).status_code == 200  # exactly the limit


def test_checksum_mismatch_400_stores_nothing(store: LocalBlobStore) -> None:
    url = store.presign_put("c/x", 60)

    def b64(digest: bytes) -> str:
        return base64.b64encode(digest).decode()

    wrong = {"x-amz-checksum-sha256": b64(hashlib.sha256(b"other").digest())}
    assert_error(httpx.put(url, content=b"body", headers=wrong), 400, "bad_digest")
    assert store.head("c/x") is None
    wrong_md5 = {"Content-MD5": b64(hashlib.md5(b"other").digest())}  # noqa: S324
    assert_error(httpx.put(url, content=b"body", headers=wrong_md5), 400, "bad_digest")
    assert store.head("c/x") is None and leftovers(store) == []
    garbled = {"x-amz-checksum-sha256": "not base64!"}
    assert_error(httpx.put(url, content=b"body", headers=garbled), 422, "invalid_request")
    right = {"x-amz-checksum-sha256": b64(hashlib.sha256(b"body").digest())}
    r = httpx.put(url, content=b"body", headers=right)
    assert r.status_code == 200
    assert r.headers["ETag"] == f'"{hashlib.md5(b"body").hexdigest()}"'  # noqa: S324
    assert store.get_bytes("c/x") == b"body"


def test_concurrent_puts_leave_one_complete_object(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path / "blobs", "", SIGNING_KEY)
    bodies = [bytes([i]) * (512 * 1024) for i in range(8)]
    with serve_blobs(store):
        url = store.presign_put("k/same", 60)
        statuses: list[int] = []
        start = threading.Barrier(len(bodies))

        def upload(body: bytes) -> None:
            start.wait()
            statuses.append(httpx.put(url, content=body, timeout=30).status_code)

        threads = [threading.Thread(target=upload, args=(b,)) for b in bodies]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert statuses == [200] * len(bodies)
        stored = store.get_bytes("k/same", limit=10 * 1024 * 1024)
        assert stored in bodies
    assert leftovers(store) == []
    assert os.listdir(store.root / "objects" / "k") == ["same"]


def test_file_and_directory_modes(store: LocalBlobStore) -> None:
    httpx.put(store.presign_put("m/n/o/file", 60), content=b"x").raise_for_status()
    store.put_json("m/doc.json", {})
    upload_id = store.create_multipart("m/mp")
    httpx.put(store.presign_upload_part("m/mp", upload_id, 1, 60), content=b"p")
    seen = 0
    for d, _dirs, files in os.walk(store.root):
        assert stat.S_IMODE(os.stat(d).st_mode) == 0o700, d
        for f in files:
            assert stat.S_IMODE(os.stat(os.path.join(d, f)).st_mode) == 0o600, f
            seen += 1
    assert seen == 4  # file, doc.json, the upload's key, part 1
    store.complete_multipart("m/mp", upload_id, [f'"{hashlib.md5(b"p").hexdigest()}"'])  # noqa: S324
    assert stat.S_IMODE(os.stat(store.root / "objects" / "m" / "mp").st_mode) == 0o600


def test_unknown_multipart_upload(store: LocalBlobStore) -> None:
    with pytest.raises(NotFound):
        store.complete_multipart("mp/y", "0" * 32, ['"x"'])
    with pytest.raises(NotFound):
        store.complete_multipart("mp/y", "not-an-id", ['"x"'])
    upload_id = store.create_multipart("mp/a")
    with pytest.raises(NotFound):  # the upload belongs to another key
        store.complete_multipart("mp/b", upload_id, ['"x"'])
    url = store.presign_upload_part("mp/b", upload_id, 1, 60)
    assert_error(httpx.put(url, content=b"p"), 404, "not_found")


def test_object_and_prefix_cannot_share_a_name(store: LocalBlobStore) -> None:
    store.put_json("p/q", 1)
    with pytest.raises(Conflict):
        store.put_json("p/q/r", 2)
    assert_error(httpx.put(store.presign_put("p/q/r", 60), content=b"x"), 409, "conflict")
    with pytest.raises(Conflict):
        store.put_json("p", 3)
    assert store.head("p") is None and store.get_json("p/q") == 1 and leftovers(store) == []


def test_range_edge_cases(store: LocalBlobStore) -> None:
    httpx.put(store.presign_put("r/x", 60), content=b"0123456789").raise_for_status()
    url = store.presign_get("r/x", 60)
    r = httpx.get(url, headers={"Range": "bytes=20-"})
    assert_error(r, 416, "range_not_satisfiable")
    assert r.headers["Content-Range"] == "bytes */10"
    r = httpx.get(url, headers={"Range": "bytes=0-1,4-5"})  # several ranges: the whole object
    assert r.status_code == 200 and r.content == b"0123456789"
    assert parse_range(None, 10) is None
    assert parse_range("bytes=2-4", 10) == (2, 5)
    assert parse_range("bytes=-3", 10) == (7, 10)
    assert parse_range("bytes=-30", 10) == (0, 10)
    assert parse_range("bytes=5-2", 10) is None
    assert parse_range("items=0-1", 10) is None
    for bad in ["bytes=10-", "bytes=-0"]:
        with pytest.raises(Unsatisfiable):
            parse_range(bad, 10)
    with pytest.raises(Unsatisfiable):
        parse_range("bytes=0-", 0)


async def test_missing_store_answers_503() -> None:
    app = Starlette(routes=list(routes_blobs.ROUTES))
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://cp.test"
    ) as client:
        r = await client.get("/v1/blobs/a/x?op=get&exp=1&sig=00")
    assert_error(r, 503, "unavailable")


def test_presign_needs_a_base_url(tmp_path: Path) -> None:
    from control_plane.errors import Unavailable

    store = LocalBlobStore(tmp_path, "", SIGNING_KEY)
    with pytest.raises(Unavailable):
        store.presign_get("a", 60)
    store.base_url = "http://127.0.0.1:9/"
    assert store.presign_get("a b", 60).startswith("http://127.0.0.1:9/v1/blobs/a%20b?op=get&")


def test_sweep_plays_the_lifecycle(store: LocalBlobStore, clock: Clock) -> None:
    store.put_json("payloads/acme/pl_old", 1)
    store.put_json("payloads/acme/pl_new", 2)
    store.put_json("models/m/1/config.pbtxt", 3)
    old = clock.now - 8 * 86_400
    os.utime(store.root / "objects/payloads/acme/pl_old", (old, old))
    os.utime(store.root / "objects/models/m/1/config.pbtxt", (old, old))
    stale = store.create_multipart("models/m/2/model.plan")
    os.utime(store.root / ".uploads" / stale, (old, old))
    assert store.sweep() == 2
    assert store.head("payloads/acme/pl_old") is None
    assert store.head("payloads/acme/pl_new") is not None
    assert store.head("models/m/1/config.pbtxt") is not None  # no lifecycle on models
    assert not (store.root / ".uploads" / stale).exists()


def test_routes_are_in_openapi() -> None:
    doc: dict[str, Any] = build_openapi(list(routes_blobs.ROUTES), "test")
    ops = next(v for k, v in doc["paths"].items() if k.startswith("/v1/blobs/"))
    assert set(ops) == {"get", "put"}
    assert ops["get"]["security"] == [] and ops["put"]["security"] == []


def test_a_disk_failure_is_unavailable_not_a_raw_oserror(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Disk full / I/O errors surface as the contract's ``Unavailable`` (503)."""
    import errno

    from control_plane.errors import Unavailable
    from control_plane.storage.local_blobs import LocalBlobStore

    store = LocalBlobStore(tmp_path / "blobs", "http://127.0.0.1:1", b"k" * 32)
    store.put_bytes("payloads/ok", b"x")

    def full(*_: object, **__: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("control_plane.storage.local_blobs.os.replace", full)
    with pytest.raises(Unavailable, match="No space left"):
        store.put_bytes("payloads/new", b"y")
    assert store.get_bytes("payloads/ok") == b"x"  # what was stored is untouched
