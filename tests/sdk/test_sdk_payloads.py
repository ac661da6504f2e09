"""8 MiB in, 8 MiB out of a job through presigned URLs, end to end on loopback sockets.

The SDK talks to the control plane (uvicorn on 127.0.0.1); the real runner daemon (job loop,
``runner.payloads`` fetch and upload) serves the test-only ``scale`` model
(tests/fixtures/models/scale: one FP32 input and output with a -1 dim) with an engine that
computes ``OUTPUT0 = 2 * INPUT0 + 1`` in place of Triton. The control plane's traffic is
counted at the ASGI boundary, per path. On DynamoDB + S3 (moto over HTTP) the 16 MiB never pass
through it; on the embedded store its presigned URLs are the control plane's own
``/v1/blobs/…``, so the payloads go through those routes and through nothing else.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from gpufleet import Client
from gpufleet.wire import OutputRequest, Tensor

from control_plane.storage.stores import Stores
from runner.backends.mock_backend import MockBackend, MockEngine
from runner.daemon import Daemon
from runner.gpu import GpuReader
from runner.settings import RunnerSettings
from runner.tensors import from_numpy, to_numpy
from tests.conftest import STORE_KINDS
from tests.helpers.fleet import serve_in_thread

SCALE = Path(__file__).resolve().parents[1] / "fixtures" / "models" / "scale"
N = 2 * 1024 * 1024  # FP32 elements: 8 MiB


class ScaleEngine(MockEngine):
    """The mock engine, but computing ``scale`` for real (so the bytes are checked)."""

    async def infer(
        self,
        model: str,
        version: str,
        inputs: list[Tensor],
        outputs: list[OutputRequest] | None,
        parameters: dict[str, Any],
        timeout_s: float,
    ) -> list[Tensor]:
        if model != "scale":
            return await super().infer(model, version, inputs, outputs, parameters, timeout_s)
        (x,) = [to_numpy(t) for t in inputs]
        self.infer_count += 1
        return [from_numpy("OUTPUT0", "FP32", (2 * x + 1).astype(np.float32))]


class CountingApp:
    """ASGI wrapper counting the body bytes the control plane receives and sends, apart for
    the blob routes (``/v1/blobs/…``) and everything else."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.bytes: Counter[str] = Counter()

    def total(self) -> Counter[str]:
        return Counter(self.bytes)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        kind = "blobs" if scope.get("path", "").startswith("/v1/blobs/") else "api"

        async def counted_receive() -> Any:
            message = await receive()
            self.bytes[kind] += len(message.get("body", b""))
            return message

        async def counted_send(message: Any) -> None:
            self.bytes[kind] += len(message.get("body", b""))
            await send(message)

        await self.app(scope, counted_receive, counted_send)


def job_round_trip(fleet: Client, x: np.ndarray[Any, Any]) -> dict[str, np.ndarray[Any, Any]]:
    """``x`` through ``fleet.infer``: the input is uploaded (``data_ref``), so the call runs
    as a job; its large output stays in the bucket and ``POST /v1/models/{m}/infer`` answers
    its ``outputs_url``, which the SDK fetches from there (not through the API)."""
    return fleet.infer("scale", {"INPUT0": x}, timeout=120)


@pytest.fixture
def counted(cp_app: Any, stores: Stores) -> Iterator[tuple[CountingApp, str]]:
    app = CountingApp(cp_app)
    server, thread, url = serve_in_thread(app)
    stores.set_public_url(url)  # the embedded store's blob URLs: this server
    yield app, url
    server.should_exit = True
    thread.join(timeout=10)


@pytest.mark.parametrize("store_kind", STORE_KINDS)
async def test_8mib_in_and_out_through_presigned_urls(
    counted: tuple[CountingApp, str], admin_key: str, tmp_path: Path, store_kind: str
) -> None:
    app, url = counted
    repo = tmp_path / "repo"
    shutil.copytree(SCALE, repo / "scale")
    with Client(url, api_key=admin_key, timeout=60.0) as fleet:
        fleet.models.push(repo / "scale")
        join = fleet.admin.create_join_token().join_token
        settings = RunnerSettings(
            control_plane_url=url,
            join_token=join,
            name="payloads",
            backend="mock",
            model_repository=repo,
            state_dir=tmp_path / "state",
            status_port=0,
        )
        backend = MockBackend(repo)
        backend.engine = ScaleEngine(repo)
        daemon = Daemon(settings, backend, gpus=GpuReader())
        run = asyncio.create_task(daemon.run(install_signals=False))
        try:
            x = np.random.default_rng(7).random(N, dtype=np.float32)
            assert x.nbytes == 8 * 1024 * 1024
            before = app.total()
            started = time.perf_counter()
            out = await asyncio.to_thread(job_round_trip, fleet, x)
            elapsed = time.perf_counter() - started
            through_cp = app.total() - before
        finally:
            daemon.request_stop()
            assert await asyncio.wait_for(run, 60) == 0

    y = out["OUTPUT0"]
    assert y.dtype == np.float32 and y.shape == (N,)
    np.testing.assert_array_equal(y, 2 * x + 1)
    assert daemon.backend.engine.infer_count == 1
    # 16 MiB moved; the API routes saw only JSON (tokens, job, URLs, polls)
    assert through_cp["api"] < 256 * 1024, through_cp
    if store_kind == "dynamodb":  # the bucket is S3's: nothing went through the blob routes
        assert through_cp["blobs"] == 0, through_cp
    else:  # each payload exactly once in (PUT) and once out (GET): the SDK's and the runner's
        assert 4 * x.nbytes <= through_cp["blobs"] < 4 * x.nbytes + 64 * 1024, through_cp
    print(
        f"8 MiB in + 8 MiB out in {elapsed:.2f}s on {store_kind}; through the control plane: "
        f"{through_cp['api']} bytes API, {through_cp['blobs']} bytes /v1/blobs"
    )
