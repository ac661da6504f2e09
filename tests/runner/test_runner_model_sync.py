"""Model sync on the runner, piece by piece: downloads from a real HTTP server on 127.0.0.1
(Range support, dropped connections, refused URLs), the verified content-addressed cache,
the atomic directory swap and Triton's config override."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import stat
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import json_format
from gpufleet.wire import DesiredFile, GpuInfo
from tritonclient.grpc import model_config_pb2 as mc

from runner import model_download, model_repo
from runner.cache import CacheError, ContentCache
from runner.model_download import Downloader, DownloadError
from runner.model_repo import materialise, remove_model_dir
from runner.triton_config import load_config, triton_gpu_map


class FileServer:
    """Serves ``objects`` (path -> bytes) with HTTP Range; knobs to misbehave."""

    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}
        self.requests: list[tuple[str, str | None]] = []  # (path, Range header)
        self.drop_after: dict[str, int] = {}  # path -> bytes sent before the connection drops
        self.refuse: set[str] = set()  # paths answered 403 (an expired presigned URL)
        self.ignore_range = False
        self.delay: dict[str, float] = {}  # path -> seconds before answering
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                rng = self.headers.get("Range")
                server.requests.append((path, rng))
                if path in server.delay:
                    time.sleep(server.delay[path])
                if path in server.refuse:
                    self._plain(403, b"<Error><Code>AccessDenied</Code></Error>")
                    return
                body = server.objects.get(path)
                if body is None:
                    self._plain(404, b"not found")
                    return
                start = 0
                if rng and not server.ignore_range:
                    start = int(rng.removeprefix("bytes=").split("-")[0])
                    if start >= len(body):
                        self._plain(416, b"")
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                else:
                    self.send_response(200)
                chunk = body[start:]
                self.send_header("Content-Length", str(len(chunk)))
                self.end_headers()
                cut = server.drop_after.pop(path, None)
                if cut is not None:
                    self.wfile.write(chunk[:cut])
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                self.wfile.write(chunk)

            def _plain(self, status: int, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def add(self, key: str, body: bytes, path: str | None = None) -> DesiredFile:
        """Serve ``body`` at ``/<key>``; the DesiredFile the control plane would send."""
        self.objects[f"/{key}"] = body
        return DesiredFile(
            path=path or key.split("/", 1)[-1],
            size=len(body),
            sha256=hashlib.sha256(body).hexdigest(),
            url=f"{self.url}/{key}?X-Amz-Signature=abc",
        )

    def gets(self, key: str) -> list[str | None]:
        return [r for p, r in self.requests if p == f"/{key}"]

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server() -> Iterator[FileServer]:
    s = FileServer()
    yield s
    s.close()


@pytest.fixture
def cache(tmp_path: Path) -> ContentCache:
    return ContentCache(tmp_path / "cache")


def _body(n: int, seed: int = 0) -> bytes:
    return bytes((i * 7 + seed) % 251 for i in range(n))


# --------------------------------------------------------------------------- downloads


async def test_files_are_fetched_in_parallel_verified_and_cached(
    server: FileServer, cache: ContentCache
) -> None:
    files = [server.add(f"m/1/f{i}.bin", _body(300_000 + i, i), f"1/f{i}.bin") for i in range(5)]
    dl = Downloader(cache, concurrency=3)
    try:
        got = await dl.fetch(files)
        assert set(got) == {f.path for f in files}
        for f in files:
            assert got[f.path] == cache.objects / f.sha256
            assert hashlib.sha256(got[f.path].read_bytes()).hexdigest() == f.sha256
            assert stat.S_IMODE(got[f.path].stat().st_mode) == 0o444
        assert len(server.requests) == 5
        assert list(cache.partial.iterdir()) == []

        again = await dl.fetch(files)  # cached: re-verified, nothing downloaded
        assert again == got and len(server.requests) == 5
    finally:
        await dl.aclose()


async def test_identical_files_are_downloaded_once(server: FileServer, cache: ContentCache) -> None:
    a = server.add("m/1/a.bin", b"same bytes", "1/a.bin")
    b = server.add("m/1/b.bin", b"same bytes", "1/b.bin")
    dl = Downloader(cache)
    try:
        got = await dl.fetch([a, b])
    finally:
        await dl.aclose()
    assert got["1/a.bin"] == got["1/b.bin"]
    assert len(server.requests) == 1


async def test_a_dropped_connection_resumes_with_a_range_request(
    server: FileServer, cache: ContentCache
) -> None:
    body = _body(2_000_000)
    f = server.add("m/1/big.bin", body, "1/big.bin")
    server.drop_after["/m/1/big.bin"] = 700_000
    dl = Downloader(cache, retry_delay_s=0.01)
    try:
        got = await dl.fetch([f])
    finally:
        await dl.aclose()
    assert got["1/big.bin"].read_bytes() == body
    ranges = server.gets("m/1/big.bin")
    assert ranges[0] is None and ranges[1] is not None
    resumed_from = int(ranges[1].removeprefix("bytes=").rstrip("-"))
    assert 0 < resumed_from <= 700_000
    assert dl.resumed == 1


async def test_a_partial_file_left_by_an_earlier_run_is_resumed(
    server: FileServer, cache: ContentCache
) -> None:
    body = _body(500_000, 3)
    f = server.add("m/1/w.bin", body, "1/w.bin")
    cache.partial_path(f.sha256).write_bytes(body[:123_456])
    dl = Downloader(cache)
    try:
        got = await dl.fetch([f])
    finally:
        await dl.aclose()
    assert got["1/w.bin"].read_bytes() == body
    assert server.gets("m/1/w.bin") == ["bytes=123456-"]


async def test_a_server_without_range_support_restarts_from_zero(
    server: FileServer, cache: ContentCache
) -> None:
    body = _body(200_000, 5)
    f = server.add("m/1/n.bin", body, "1/n.bin")
    cache.partial_path(f.sha256).write_bytes(b"garbage that must not stay" * 10)
    server.ignore_range = True
    dl = Downloader(cache)
    try:
        got = await dl.fetch([f])
    finally:
        await dl.aclose()
    assert got["1/n.bin"].read_bytes() == body


@pytest.mark.parametrize("kind", ["size", "sha256", "longer"])
async def test_an_object_that_does_not_match_never_enters_the_cache(
    server: FileServer, cache: ContentCache, kind: str
) -> None:
    good = _body(100_000)
    spec = server.add("m/1/model.bin", good, "1/model.bin")
    if kind == "size":
        server.objects["/m/1/model.bin"] = good[:-10]
    elif kind == "sha256":
        server.objects["/m/1/model.bin"] = b"X" + good[1:]
    else:
        server.objects["/m/1/model.bin"] = good + b"extra"
    dl = Downloader(cache)
    try:
        with pytest.raises(DownloadError) as err:
            await dl.fetch([spec])
    finally:
        await dl.aclose()
    assert err.value.corrupt
    assert "mismatch" in str(err.value)
    assert cache.digests() == set()
    assert list(cache.partial.iterdir()) == []
    requests = len(server.requests)
    dl2 = Downloader(cache, quarantine_s=60)
    try:
        for _ in range(2):  # a retry soon after does not download the bad object again
            with pytest.raises(DownloadError, match="mismatch"):
                await dl2.fetch([spec])
    finally:
        await dl2.aclose()
    assert len(server.requests) == requests + 1


async def test_a_tampered_cached_file_is_refused_and_fetched_again(
    server: FileServer, cache: ContentCache
) -> None:
    body = _body(50_000, 9)
    f = server.add("m/1/t.bin", body, "1/t.bin")
    dl = Downloader(cache)
    try:
        path = (await dl.fetch([f]))["1/t.bin"]
        os.chmod(path, 0o644)
        path.write_bytes(b"evil" + body[4:])  # same size, other bytes
        assert cache.verified(f.sha256, f.size) is None  # refused (and removed)
        assert not path.exists()
        path = (await dl.fetch([f]))["1/t.bin"]
    finally:
        await dl.aclose()
    assert path.read_bytes() == body
    assert len(server.gets("m/1/t.bin")) == 2


async def test_a_refused_url_is_reported_as_expired(
    server: FileServer, cache: ContentCache
) -> None:
    f = server.add("m/1/x.bin", b"abc", "1/x.bin")
    server.refuse.add("/m/1/x.bin")
    missing = DesiredFile(path="1/y.bin", size=1, sha256="0" * 64, url=f"{server.url}/nope")
    no_url = DesiredFile(path="1/z.bin", size=1, sha256="1" * 64, url=None)
    dl = Downloader(cache)
    try:
        with pytest.raises(DownloadError) as err:
            await dl.fetch([f])
        assert err.value.expired and "403" in str(err.value)
        with pytest.raises(DownloadError, match="404"):
            await dl.fetch([missing])
        with pytest.raises(DownloadError, match="no download URL"):
            await dl.fetch([no_url])
    finally:
        await dl.aclose()


def test_cache_commit_checks_size_and_digest(cache: ContentCache) -> None:
    digest = hashlib.sha256(b"hello").hexdigest()
    cache.partial_path(digest).write_bytes(b"hellO")
    with pytest.raises(CacheError, match="sha256"):
        cache.commit(digest, 5)
    cache.partial_path(digest).write_bytes(b"hello")
    path = cache.commit(digest, 5)
    assert path.read_bytes() == b"hello" and cache.verified(digest, 5) == path
    assert cache.verified(digest, 6) is None  # wrong size: refused
    with pytest.raises(CacheError):
        cache.path("../../etc/passwd")
    other = hashlib.sha256(b"x").hexdigest()
    cache.partial_path(other).write_bytes(b"x")
    cache.commit(other, 1)
    assert cache.prune({other}) == [] and cache.digests() == {other}


# --------------------------------------------------------------------------- the directory


def _cached(tmp_path: Path, files: dict[str, bytes]) -> dict[str, Path]:
    out = {}
    src = tmp_path / "src"
    src.mkdir(exist_ok=True)
    for rel, body in files.items():
        p = src / hashlib.sha256(body).hexdigest()
        p.write_bytes(body)
        out[rel] = p
    return out


def test_materialise_swaps_the_whole_model_directory(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    v1 = _cached(tmp_path, {"config.pbtxt": b"name: 'm'", "1/model.py": b"v1"})
    target = materialise(repo, "m", v1)
    assert (target / "1" / "model.py").read_bytes() == b"v1"
    inode_before = target.stat().st_ino

    v2 = _cached(tmp_path, {"config.pbtxt": b"name: 'm' # 2", "2/model.py": b"v2"})
    materialise(repo, "m", v2)
    assert sorted(p.relative_to(target).as_posix() for p in target.rglob("*")) == [
        "2",
        "2/model.py",
        "config.pbtxt",
    ]
    assert (target / "config.pbtxt").read_bytes() == b"name: 'm' # 2"
    assert target.stat().st_ino != inode_before  # a new directory, not edited in place
    assert sorted(p.name for p in repo.iterdir()) == ["m"]  # no staging left behind

    remove_model_dir(repo, "m")
    assert list(repo.iterdir()) == []


def test_swap_is_one_exchange_on_this_file_system(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    (a / "x").write_text("a")
    (b / "x").write_text("b")
    assert model_repo._renameat2_exchange(a, b)
    assert (a / "x").read_text() == "b" and (b / "x").read_text() == "a"


def test_swap_falls_back_to_two_renames(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(model_repo, "_renameat2_exchange", lambda a, b: False)
    repo = tmp_path / "repo"
    materialise(repo, "m", _cached(tmp_path, {"config.pbtxt": b"1", "1/a": b"a"}))
    materialise(repo, "m", _cached(tmp_path, {"config.pbtxt": b"2", "2/b": b"b"}))
    assert (repo / "m" / "config.pbtxt").read_bytes() == b"2"
    assert sorted(p.name for p in repo.iterdir()) == ["m"]


def test_a_failed_build_leaves_the_served_directory_alone(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    materialise(repo, "m", _cached(tmp_path, {"config.pbtxt": b"1", "1/a": b"a"}))
    broken = {"config.pbtxt": tmp_path / "src" / "missing", "1/a": tmp_path / "src" / "gone"}
    with pytest.raises(OSError):
        materialise(repo, "m", broken)
    assert (repo / "m" / "1" / "a").read_bytes() == b"a"
    for bad in ("../x", "/etc/x", "1/../../x", "a\\b"):
        with pytest.raises(ValueError, match="unsafe"):
            materialise(repo, "m", _cached(tmp_path, {"config.pbtxt": b"1", bad: b"x"}))
    assert sorted(p.name for p in repo.iterdir()) == ["m"]


# --------------------------------------------------------------------------- Triton config

ADD_SUB = (
    Path(__file__).resolve().parents[2] / "model_repository/add_sub/config.pbtxt"
).read_text()


def _parse(override: str) -> Any:
    return json_format.Parse(override, mc.ModelConfig())


def test_config_override_pins_versions_and_gpus() -> None:
    plain = _parse(load_config(ADD_SUB, "add_sub", ["2", "1"], None))
    assert list(plain.version_policy.specific.versions) == [1, 2]
    assert plain.instance_group[0].kind == mc.ModelInstanceGroup.KIND_CPU  # untouched
    assert plain.max_batch_size == 8 and [i.name for i in plain.input] == ["INPUT0", "INPUT1"]

    gpu_cfg = 'name: "g"\nbackend: "onnxruntime"\ninstance_group [{ count: 2 kind: KIND_GPU }]'
    pinned = _parse(load_config(gpu_cfg, "g", ["3"], [1]))
    assert pinned.instance_group[0].kind == mc.ModelInstanceGroup.KIND_GPU
    assert list(pinned.instance_group[0].gpus) == [1] and pinned.instance_group[0].count == 2
    bare = _parse(load_config('backend: "onnxruntime"', "h", ["1"], [0, 2]))
    assert bare.name == "h"
    assert [(g.kind, list(g.gpus)) for g in bare.instance_group] == [
        (mc.ModelInstanceGroup.KIND_GPU, [0, 2])
    ]
    assert json.loads(load_config(ADD_SUB, "add_sub", ["1"], None))["name"] == "add_sub"


def test_gpu_indexes_map_to_the_order_triton_was_given() -> None:
    gpus = [
        GpuInfo(index=i, uuid=f"GPU-{i}", name="H100", memory_total_mb=80_000, memory_used_mb=0)
        for i in range(4)
    ]
    assert triton_gpu_map(None, gpus) == {0: 0, 1: 1, 2: 2, 3: 3}
    assert triton_gpu_map(["2", "GPU-3"], gpus) == {2: 0, 3: 1}
    assert triton_gpu_map(["GPU-9"], gpus) == {}


async def test_downloads_run_concurrently(server: FileServer, cache: ContentCache) -> None:
    """Four files at concurrency 4 are in flight together (the server sees overlapping GETs)."""
    files = [server.add(f"p/1/{i}.bin", _body(1_000_000, i), f"1/{i}.bin") for i in range(4)]
    in_flight = 0
    peak = 0
    real = model_download.Downloader._transfer

    async def counting(self: Downloader, f: DesiredFile, part: Path) -> None:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        try:
            await asyncio.sleep(0.05)
            await real(self, f, part)
        finally:
            in_flight -= 1

    dl = Downloader(cache, concurrency=4)
    dl._transfer = counting.__get__(dl)  # type: ignore[method-assign]
    try:
        await dl.fetch(files)
    finally:
        await dl.aclose()
    assert peak == 4
