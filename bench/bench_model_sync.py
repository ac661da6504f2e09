"""Model sync benchmark: a 512 MiB model through gpufleet vs plain boto3, on one moto server.

gpufleet
  push      ``gpufleet.Client.models.push`` of a Triton model directory (config.pbtxt, model.py
            and a 512 MiB weights file): hash locally, create the version, PUT the 64 MiB
            multipart parts to their presigned URLs, commit (the control plane re-reads every
            object to check its sha256). The upload-only window (first to last byte sent) is
            shown as its own line.
  sync      a runner's path: a signed heartbeat answers ``desired_models`` with a presigned
            GET per file; ``runner.model_download.Downloader`` fetches them into the
            content-addressed cache, checking size and sha256.
boto3
  upload_file / download_file of the same weights file to/from the same bucket (default
  ``TransferConfig``: 8 MiB parts, 10 threads), no verification.

The moto server is the one the tests use (``control_plane.embedded.serialized_moto_server``:
one request at a time), so both sides see the same server. Loopback only.

    .venv/bin/python bench/bench_model_sync.py [--size-mib 512]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "sdk")]
os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")

import httpx  # noqa: E402
from gpufleet import Client, signing  # noqa: E402
from gpufleet.models import plan_push  # noqa: E402
from gpufleet.wire import DesiredFile  # noqa: E402

from control_plane.app import create_app  # noqa: E402
from control_plane.composition import build_services  # noqa: E402
from control_plane.embedded import serialized_moto_server  # noqa: E402
from control_plane.settings import Settings  # noqa: E402
from control_plane.storage.aws import make_clients  # noqa: E402
from control_plane.storage.definitions import create_all  # noqa: E402
from runner.cache import ContentCache  # noqa: E402
from runner.model_download import Downloader  # noqa: E402
from tests.helpers.fleet import free_port, serve_in_thread  # noqa: E402

MiB = 1024 * 1024
CONFIG = """name: "big"
backend: "python"
max_batch_size: 0
input [ { name: "IN" data_type: TYPE_FP32 dims: [ 4 ] } ]
output [ { name: "OUT" data_type: TYPE_FP32 dims: [ 4 ] } ]
"""


def make_model(root: Path, size: int) -> Path:
    model = root / "big"
    (model / "1").mkdir(parents=True)
    (model / "config.pbtxt").write_text(CONFIG)
    (model / "1" / "model.py").write_text("# weights only: this model is never loaded\n")
    with open(model / "1" / "weights.bin", "wb") as f:
        left = size
        while left:
            chunk = min(left, 16 * MiB)
            f.write(os.urandom(chunk))
            left -= chunk
    return model


def signed_post(base: str, rid: str, secret: str, path: str, body: dict[str, Any]) -> Any:
    raw = json.dumps(body).encode()
    headers = signing.sign_headers(rid, secret, "POST", path, body=raw)
    r = httpx.post(
        base + path,
        content=raw,
        headers={**headers, "Content-Type": "application/json"},
        timeout=60,
    )
    r.raise_for_status()
    return r.json()


def gpufleet_push(url: str, key: str, model: Path) -> tuple[float, float, float]:
    """Seconds of (the whole push, its local hashing, first to last byte uploaded)."""
    start = time.perf_counter()
    plan_push(model)  # what push does first: hash every file
    hashing = time.perf_counter() - start
    marks: list[float] = []

    def progress(sent: int, total: int) -> None:
        if not marks:
            marks.append(time.perf_counter())
        if sent >= total:
            marks.append(time.perf_counter())

    with Client(url, api_key=key, timeout=600) as fleet:
        start = time.perf_counter()
        view = fleet.models.push(model, progress=progress)
        total = time.perf_counter() - start
    assert view.state == "READY", view
    return total, hashing, (marks[-1] - marks[0]) if len(marks) > 1 else total


def gpufleet_sync(url: str, admin: dict[str, str], cache_dir: Path) -> tuple[float, int]:
    """Register a runner, deploy the model, heartbeat, fetch desired files; (seconds, bytes)."""
    r = httpx.post(url + "/v1/admin/join-tokens", headers=admin, json={"region": "bench"})
    r.raise_for_status()
    token = r.json()["join_token"]
    r = httpx.post(url + "/v1/runners/register", json={"join_token": token, "name": "bench"})
    r.raise_for_status()
    rid, secret = r.json()["runner_id"], r.json()["secret"]
    gpu = {"index": 0, "uuid": "G", "name": "bench", "memory_total_mb": 1, "memory_used_mb": 0}
    path = f"/v1/runners/{rid}/heartbeat"
    signed_post(url, rid, secret, path, {"gpus": [gpu]})  # online before the deployment
    r = httpx.put(url + "/v1/models/big/deployment", headers=admin, json={"min_replicas": 1})
    r.raise_for_status()
    hb = signed_post(url, rid, secret, path, {"gpus": [gpu]})
    (desired,) = hb["desired_models"]
    files = [DesiredFile.model_validate(f) for f in desired["files"]]

    async def fetch() -> float:
        downloader = Downloader(ContentCache(cache_dir), concurrency=4, timeout_s=300)
        try:
            start = time.perf_counter()
            await downloader.fetch(files)
            return time.perf_counter() - start
        finally:
            await downloader.aclose()

    return asyncio.run(fetch()), sum(f.size for f in files)


def boto3_round_trip(settings: Settings, weights: Path, out: Path) -> tuple[float, float]:
    _, s3 = make_clients(settings)
    key = f"plain/{uuid.uuid4().hex}/weights.bin"
    start = time.perf_counter()
    s3.upload_file(str(weights), settings.bucket, key)
    up = time.perf_counter() - start
    start = time.perf_counter()
    s3.download_file(settings.bucket, key, str(out))
    down = time.perf_counter() - start
    assert out.stat().st_size == weights.stat().st_size
    return up, down


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size-mib", type=int, default=512)
    args = parser.parse_args()
    size = args.size_mib * MiB

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # moto's request log
    port = free_port()
    moto = serialized_moto_server(port)
    moto.start()
    endpoint = f"http://127.0.0.1:{port}"
    tag = uuid.uuid4().hex[:8]
    settings = Settings(
        dynamodb_endpoint_url=endpoint,
        s3_endpoint_url=endpoint,
        table_prefix=f"bench{tag}",
        bucket=f"bench{tag}",
        jwt_secret="bench-signing-key-0123456789abcdef0123456789",  # type: ignore[arg-type]
    )
    dynamodb, s3 = make_clients(settings)
    create_all(dynamodb, s3, settings.table_prefix, settings.bucket, settings.aws_region)
    services = build_services(settings)
    server, thread, url = serve_in_thread(create_app(settings, services))
    key = services.auth.issue_api_key("default", "admin", "bench").api_key
    token = httpx.post(url + "/v1/auth/token", json={"api_key": key}).json()["access_token"]
    admin = {"Authorization": f"Bearer {token}"}
    try:
        with tempfile.TemporaryDirectory(prefix="gf-bench-sync-") as tmp:
            root = Path(tmp)
            model = make_model(root, size)
            weights = model / "1" / "weights.bin"
            push_s, hash_s, upload_s = gpufleet_push(url, key, model)
            sync_s, synced = gpufleet_sync(url, admin, root / "cache")
            up_s, down_s = boto3_round_trip(settings, weights, root / "plain.bin")
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        moto.stop()

    rows = [
        ("gpufleet push (hash + upload + verify)", size, push_s),
        ("  local sha256", size, hash_s),
        ("  upload (presigned PUTs, 64 MiB parts)", size, upload_s),
        ("  create + commit (server checks sha256)", size, push_s - hash_s - upload_s),
        ("gpufleet sync (presigned GET + sha256)", synced, sync_s),
        ("boto3 upload_file", size, up_s),
        ("boto3 download_file", size, down_s),
    ]
    print(f"\nmodel sync, {args.size_mib} MiB weights, moto S3 on loopback\n")
    print(f"{'operation':<42}{'MiB':>8}{'seconds':>10}{'MiB/s':>10}")
    print("-" * 70)
    for name, nbytes, secs in rows:
        print(f"{name:<42}{nbytes / MiB:>8.0f}{secs:>10.2f}{nbytes / MiB / secs:>10.1f}")
    print(
        f"\nupload: gpufleet push / boto3 = {push_s / up_s:.2f}x the time; "
        f"sync / boto3 download = {sync_s / down_s:.2f}x"
    )


if __name__ == "__main__":
    main()
