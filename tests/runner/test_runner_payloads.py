"""runner.payloads against a small real HTTP server on loopback standing in for the bucket's
presigned URLs: fetch and decode ``data_ref`` inputs, upload large outputs, retries and
failures."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np
import pytest
from gpufleet.tensors import decode_outputs, to_raw_bytes
from gpufleet.wire import LeasedJob, ResultUpload, Tensor

from runner import payloads
from runner.payloads import PayloadError, fetch_inputs, store_outputs
from runner.tensors import TensorError, from_numpy, to_numpy


class Bucket:
    """GET serves ``objects[path]``; PUT stores the body; ``fail[path]`` statuses first."""

    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}
        self.fail: dict[str, list[int]] = {}
        self.requests: list[tuple[str, str]] = []
        bucket = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self, status: int, body: bytes = b"") -> None:
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _failed(self) -> bool:
                bucket.requests.append((self.command, self.path))
                pending = bucket.fail.get(self.path)
                if pending:
                    self._answer(pending.pop(0))
                    return True
                return False

            def do_GET(self) -> None:
                if self._failed():
                    return
                body = bucket.objects.get(self.path)
                self._answer(404) if body is None else self._answer(200, body)

            def do_PUT(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                if self._failed():
                    return
                bucket.objects[self.path] = body
                self._answer(200)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"


@pytest.fixture
def bucket(monkeypatch: pytest.MonkeyPatch) -> Iterator[Bucket]:
    monkeypatch.setattr(payloads, "RETRY_BASE_S", 0.01)
    b = Bucket()
    thread = threading.Thread(target=b.server.serve_forever, daemon=True)
    thread.start()
    yield b
    b.server.shutdown()
    b.server.server_close()


def leased(inputs: list[Tensor], urls: dict[str, str], upload: ResultUpload | None) -> LeasedJob:
    return LeasedJob(
        id="job_1",
        lease_token="t",
        lease_expires_at="2030-01-01T00:00:00Z",
        model="scale",
        model_version="1",
        inputs=inputs,
        timeout_s=60,
        attempt=1,
        input_urls=urls,
        outputs_upload=upload,
    )


async def test_data_ref_inputs_are_fetched_and_decoded(bucket: Bucket) -> None:
    x = np.arange(1000, dtype=np.float32).reshape(10, 100)
    bucket.objects["/p1"] = to_raw_bytes(x)
    bucket.fail["/p1"] = [503]  # retried
    inline = Tensor(name="B", datatype="INT32", shape=[2], data=[1, 2])
    ref = Tensor(name="A", datatype="FP32", shape=[10, 100], data_ref="pl_1")
    job = await fetch_inputs(leased([ref, inline], {"A": f"{bucket.url}/p1"}, None))
    a, b = job.inputs
    np.testing.assert_array_equal(to_numpy(a), x)
    assert a.data_ref == "pl_1" and b is inline
    assert bucket.requests == [("GET", "/p1"), ("GET", "/p1")]


async def test_fetch_failures(bucket: Bucket) -> None:
    ref = Tensor(name="A", datatype="FP32", shape=[4], data_ref="pl_1")
    with pytest.raises(PayloadError, match="no URL"):
        await fetch_inputs(leased([ref], {}, None))
    with pytest.raises(PayloadError, match="HTTP 404"):
        await fetch_inputs(leased([ref], {"A": f"{bucket.url}/gone"}, None))
    assert bucket.requests == [("GET", "/gone")]  # a 4xx is not retried
    bucket.objects["/short"] = b"\0" * 12
    with pytest.raises(TensorError, match="12 bytes"):
        await fetch_inputs(leased([ref], {"A": f"{bucket.url}/short"}, None))


async def test_large_outputs_are_uploaded_small_ones_inline(bucket: Bucket) -> None:
    upload = ResultUpload(
        ref="results/job_1/x/outputs.bin", url=f"{bucket.url}/r", max_inline_bytes=1000
    )
    job = leased([Tensor(name="A", datatype="FP32", shape=[1], data=[1])], {}, upload)
    small = [from_numpy("OUT", "FP32", np.ones(10, dtype=np.float32))]
    assert await store_outputs(job, small) == (small, None)
    big = np.arange(5000, dtype=np.float32)
    names = np.array([b"a", b"\xff"], dtype=object)
    outputs = [from_numpy("OUT", "FP32", big), from_numpy("NAMES", "BYTES", names)]
    assert await store_outputs(job, outputs) == (None, "results/job_1/x/outputs.bin")
    stored = decode_outputs(bucket.objects["/r"])
    np.testing.assert_array_equal(stored["OUT"], big)
    assert stored["NAMES"].tolist() == [b"a", b"\xff"]  # raw: undecodable bytes survive
    no_target = leased(job.inputs, {}, None)
    assert await store_outputs(no_target, outputs) == (outputs, None)


async def test_upload_failure_is_a_payload_error(bucket: Bucket) -> None:
    bucket.fail["/r"] = [500, 500, 500, 500]
    upload = ResultUpload(ref="r", url=f"{bucket.url}/r", max_inline_bytes=10)
    job = leased([Tensor(name="A", datatype="FP32", shape=[1], data=[1])], {}, upload)
    outputs = [from_numpy("OUT", "FP32", np.ones(100, dtype=np.float32))]
    with pytest.raises(PayloadError, match="HTTP 500"):
        await store_outputs(job, outputs)
    assert len(bucket.requests) == payloads.ATTEMPTS


@pytest.mark.parametrize(
    "name, datatype, values",
    [
        ("OUT", "FP64", [-2.2250738585072014e-308, 1.7976931348623157e308, -0.1, float("nan")]),
        ("OUT", "FP32", [np.finfo(np.float32).min, -1.1754944e-38, float("inf"), -float("inf")]),
        ("OUT", "FP16", [-65504.0, 0.0999755859375, -6.1e-05]),
        ('ÜBER ✓ "q"', "INT64", [-(2**63), 2**63 - 1, 0]),
        ("u", "UINT64", [2**64 - 1, 0]),
        ("b", "BOOL", [False, True, False]),
        ("i8", "INT8", [-128, 127]),
    ],
)
def test_inline_size_bound_is_above_the_json(name: str, datatype: str, values: list[Any]) -> None:
    from runner.tensors import NP_DTYPES

    arr = np.array(values * 7, dtype=NP_DTYPES[datatype]).reshape(1, 7, len(values))
    outputs = [from_numpy(name, datatype, arr), from_numpy("second", datatype, arr[:, :2])]
    exact = len(
        json.dumps([t.model_dump(exclude_none=True) for t in outputs], separators=(",", ":"))
    )
    bound = payloads._upper_bound(outputs)
    assert bound is not None and bound >= exact
    # the decision is unchanged: within the limit by the bound, or counted exactly
    for limit in (exact - 1, exact, bound, bound - 1):
        assert (payloads._inline_size(outputs, limit) <= limit) == (exact <= limit)


def test_inline_size_of_bytes_is_exact() -> None:
    arr = np.array([b"a" * 50, b"\xff"], dtype=np.object_)
    outputs = [from_numpy("T", "BYTES", arr)]
    assert payloads._upper_bound(outputs) is None
    exact = len(
        json.dumps([t.model_dump(exclude_none=True) for t in outputs], separators=(",", ":"))
    )
    assert payloads._inline_size(outputs, 10**6) == exact
