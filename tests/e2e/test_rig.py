"""The rig itself: a real Triton (CPU image) in a real Docker engine serves add_sub."""

from __future__ import annotations

import re
import statistics
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tests import rig

pytestmark = pytest.mark.docker


@pytest.fixture(scope="module")
def triton(
    docker_host: str, triton_image: str, model_repository: Path
) -> Iterator[rig.TritonContainer]:
    with rig.triton_container(
        docker_host,
        model_repository,
        rig.free_port(),
        rig.free_port(),
        rig.free_port(),
        image=triton_image,
    ) as server:
        yield server


def _inputs(module, a: np.ndarray, b: np.ndarray) -> list:  # type: ignore[no-untyped-def]
    in0 = module.InferInput("INPUT0", list(a.shape), "FP32")
    in1 = module.InferInput("INPUT1", list(b.shape), "FP32")
    in0.set_data_from_numpy(a)
    in1.set_data_from_numpy(b)
    return [in0, in1]


def _success_count(metrics: str, model: str = "add_sub") -> float:
    m = re.search(
        rf'^nv_inference_request_success\{{model="{model}",version="1"\}} (\S+)$', metrics, re.M
    )
    return float(m.group(1)) if m else 0.0


def test_add_sub_load_infer_metrics_unload(triton: rig.TritonContainer) -> None:
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(triton.http_url, network_timeout=30)
    try:
        assert client.is_server_ready()
        assert not client.is_model_ready("add_sub")  # explicit mode: nothing loaded yet
        index = {m["name"]: m for m in client.get_model_repository_index()}
        assert "add_sub" in index

        client.load_model("add_sub")
        assert client.is_model_ready("add_sub")
        config = client.get_model_config("add_sub")
        assert config["max_batch_size"] == 8
        assert config["backend"] == "python"

        rng = np.random.default_rng(0)
        for batch in (1, 3, 8):
            a = rng.standard_normal((batch, 4)).astype(np.float32)
            b = rng.standard_normal((batch, 4)).astype(np.float32)
            result = client.infer("add_sub", _inputs(httpclient, a, b))
            np.testing.assert_allclose(result.as_numpy("OUTPUT0"), a + b, rtol=1e-6)
            np.testing.assert_allclose(result.as_numpy("OUTPUT1"), a - b, rtol=1e-6)
            assert result.as_numpy("OUTPUT0").shape == (batch, 4)

        # Sequential latency through tritonclient.http (reported, loosely bounded).
        a = np.arange(4, dtype=np.float32).reshape(1, 4)
        inputs = _inputs(httpclient, a, a)
        latencies = []
        for _ in range(100):
            t = time.perf_counter()
            client.infer("add_sub", inputs)
            latencies.append(time.perf_counter() - t)
        p50 = statistics.median(latencies) * 1000
        p99 = sorted(latencies)[98] * 1000
        print(f"add_sub over HTTP: p50 {p50:.2f} ms, p99 {p99:.2f} ms (100 sequential)")
        assert p50 < 100, f"median inference latency {p50:.1f} ms"

        # Metrics port: one success per request above (3 batch sizes + 100).
        deadline = time.monotonic() + 10
        while _success_count(triton.metrics()) < 103 and time.monotonic() < deadline:
            time.sleep(0.2)
        metrics = triton.metrics()
        assert "nv_inference_request_success" in metrics
        assert _success_count(metrics) == 103

        client.unload_model("add_sub")
        deadline = time.monotonic() + 30
        while client.is_model_ready("add_sub") and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not client.is_model_ready("add_sub")
    finally:
        client.close()


def test_add_sub_grpc(triton: rig.TritonContainer) -> None:
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(triton.grpc_url)
    try:
        client.load_model("add_sub")
        assert client.is_model_ready("add_sub")
        a = np.full((2, 4), 5, dtype=np.float32)
        b = np.arange(8, dtype=np.float32).reshape(2, 4)
        result = client.infer("add_sub", _inputs(grpcclient, a, b))
        np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)
        np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)
        client.unload_model("add_sub")
    finally:
        client.close()


def test_container_binds_loopback_only(triton: rig.TritonContainer) -> None:
    """Triton's ports answer on 127.0.0.1 and the container is on the host network."""
    triton.container.reload()
    assert triton.container.attrs["HostConfig"]["NetworkMode"] == "host"
    assert "--http-address=127.0.0.1" in triton.args
    assert "--grpc-address=127.0.0.1" in triton.args
    assert "--metrics-address=127.0.0.1" in triton.args
    assert triton.container.attrs["HostConfig"]["ShmSize"] == 256 * 1024 * 1024
