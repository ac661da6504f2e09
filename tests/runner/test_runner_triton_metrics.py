"""Parsing Triton's Prometheus text (format of Triton 2.51's metrics port)."""
# ruff: noqa: E501  (Triton's own metric help texts are long)

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from runner.triton_metrics import parse_triton_metrics, scrape_triton_metrics

SAMPLE = """\
# HELP nv_inference_request_success Number of successful inference requests, all batch sizes
# TYPE nv_inference_request_success counter
nv_inference_request_success{model="add_sub",version="1"} 103
nv_inference_request_success{model="add_sub",version="2"} 7
nv_inference_request_success{model="resnet50",version="1"} 0
# HELP nv_inference_request_failure Number of failed inference requests, all batch sizes
# TYPE nv_inference_request_failure counter
nv_inference_request_failure{model="add_sub",reason="REJECTED",version="1"} 0
nv_inference_request_failure{model="add_sub",reason="CANCELED",version="1"} 0
nv_inference_request_failure{model="add_sub",reason="BACKEND",version="1"} 2
nv_inference_request_failure{model="add_sub",reason="OTHER",version="1"} 1
nv_inference_request_failure{model="resnet50",reason="OTHER",version="1"} 0
# HELP nv_inference_count Number of inferences performed (does not include cached requests)
# TYPE nv_inference_count counter
nv_inference_count{model="add_sub",version="1"} 412
nv_inference_count{model="add_sub",version="2"} 7
# HELP nv_inference_exec_count Number of model executions performed (does not include cached requests)
# TYPE nv_inference_exec_count counter
nv_inference_exec_count{model="add_sub",version="1"} 60
nv_inference_exec_count{model="add_sub",version="2"} 7
# HELP nv_inference_request_duration_us Cumulative inference request duration in microseconds (includes cached requests)
# TYPE nv_inference_request_duration_us counter
nv_inference_request_duration_us{model="add_sub",version="1"} 98213
nv_inference_request_duration_us{model="add_sub",version="2"} 4000
# HELP nv_inference_queue_duration_us Cumulative inference queuing duration in microseconds (includes cached requests)
# TYPE nv_inference_queue_duration_us counter
nv_inference_queue_duration_us{model="add_sub",version="1"} 20600
nv_inference_queue_duration_us{model="add_sub",version="2"} 1400
# HELP nv_inference_compute_input_duration_us Cumulative compute input duration in microseconds (does not include cached requests)
# TYPE nv_inference_compute_input_duration_us counter
nv_inference_compute_input_duration_us{model="add_sub",version="1"} 1545
# HELP nv_inference_compute_infer_duration_us Cumulative compute inference duration in microseconds (does not include cached requests)
# TYPE nv_inference_compute_infer_duration_us counter
nv_inference_compute_infer_duration_us{model="add_sub",version="1"} 51500
nv_inference_compute_infer_duration_us{model="add_sub",version="2"} 3100
# HELP nv_inference_compute_output_duration_us Cumulative inference compute output duration in microseconds (does not include cached requests)
# TYPE nv_inference_compute_output_duration_us counter
nv_inference_compute_output_duration_us{model="add_sub",version="1"} 800
# HELP nv_inference_pending_request_count Instantaneous number of pending requests awaiting execution per-model.
# TYPE nv_inference_pending_request_count gauge
nv_inference_pending_request_count{model="add_sub",version="1"} 0
# HELP nv_pinned_memory_pool_total_bytes Pinned memory pool total memory size, in bytes
# TYPE nv_pinned_memory_pool_total_bytes gauge
nv_pinned_memory_pool_total_bytes 268435456
# HELP nv_gpu_utilization GPU utilization rate [0.0 - 1.0)
# TYPE nv_gpu_utilization gauge
nv_gpu_utilization{gpu_uuid="GPU-1111"} 0.42
# HELP nv_gpu_memory_used_bytes GPU used memory, in bytes
# TYPE nv_gpu_memory_used_bytes gauge
nv_gpu_memory_used_bytes{gpu_uuid="GPU-1111"} 1073741824
# HELP nv_cpu_utilization CPU utilization rate [0.0 - 1.0]
# TYPE nv_cpu_utilization gauge
nv_cpu_utilization 0.05
"""


def test_per_model_counts_summed_over_versions_and_reasons() -> None:
    out = parse_triton_metrics(SAMPLE)
    add_sub = out["models"]["add_sub"]
    assert add_sub["success"] == 110
    assert add_sub["failure"] == 3
    assert isinstance(add_sub["success"], int) and isinstance(add_sub["failure"], int)
    assert add_sub["inference_count"] == 419
    assert add_sub["exec_count"] == 67
    assert add_sub["queue_us"] == 22000
    assert add_sub["compute_infer_us"] == 54600
    assert add_sub["request_us"] == 102213
    assert add_sub["avg_queue_ms"] == pytest.approx(22000 / 110 / 1000, abs=1e-3)
    assert add_sub["avg_compute_ms"] == pytest.approx(54600 / 110 / 1000, abs=1e-3)


def test_per_version_detail() -> None:
    v1 = parse_triton_metrics(SAMPLE)["models"]["add_sub"]["versions"]["1"]
    assert (v1["success"], v1["failure"], v1["queue_us"]) == (103, 3, 20600)
    assert v1["compute_output_us"] == 800


def test_model_without_requests_has_no_averages() -> None:
    resnet = parse_triton_metrics(SAMPLE)["models"]["resnet50"]
    assert resnet["success"] == 0 and resnet["failure"] == 0
    assert resnet["avg_queue_ms"] is None


def test_gpu_gauges_by_uuid() -> None:
    gpu = parse_triton_metrics(SAMPLE)["gpu"]["GPU-1111"]
    assert gpu == {"utilization": 0.42, "memory_used_bytes": 1073741824.0}


def test_empty_text() -> None:
    assert parse_triton_metrics("") == {"models": {}}


async def test_scrape_parses_and_survives_unreachable() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.port == 9:
            raise httpx.ConnectError("refused", request=request)
        return httpx.Response(200, text=SAMPLE)

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        out = await scrape_triton_metrics(client, "http://127.0.0.1:8002/metrics")
        assert out["models"]["add_sub"]["success"] == 110
        assert await scrape_triton_metrics(client, "http://127.0.0.1:9/metrics") == {}


def _with_library(text: str) -> dict[str, object]:
    """What prometheus_client's parser makes of ``text`` (the reference)."""
    from runner import triton_metrics

    return triton_metrics._summarize(list(triton_metrics._library_samples(text)))


@pytest.mark.parametrize(
    "extra",
    [
        "",
        'nv_inference_count{model="we\\"ird\\\\na\\nme",version="1"} 5\n',  # escapes
        'nv_inference_count_total{model="x",version="3",} 2 1700000000\n',  # _total, ts
        'nv_gpu_utilization{gpu_uuid="GPU-2"} +Inf\n',
        '   \n# a comment\nnv_inference_count{ model = "y" , version="1"} 1e3\n',
        "nv_cpu_utilization 0.5\n",  # a family not read
    ],
)
def test_small_parser_reads_what_prometheus_client_reads(extra: str) -> None:
    text = SAMPLE + extra
    assert parse_triton_metrics(text) == _with_library(text)


def test_a_line_the_small_parser_cannot_read_goes_to_prometheus_client(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from runner import triton_metrics

    used: list[str] = []
    library = triton_metrics._library_samples

    def spy(text: str) -> Iterator[tuple[str, dict[str, str], float]]:
        used.append(text)
        return library(text)

    monkeypatch.setattr(triton_metrics, "_library_samples", spy)
    text = SAMPLE + 'nv_inference_count{model="z",version="1"} 0x10\n'  # not a float to us
    with pytest.raises(ValueError):  # nor to prometheus_client: the scrape's error path
        parse_triton_metrics(text)
    assert used == [text]
    assert parse_triton_metrics(SAMPLE)["models"]["add_sub"]["success"] == 110
    assert used == [text]  # a readable text never reaches the library
