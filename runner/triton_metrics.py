"""Triton's Prometheus metrics (its metrics port) → the heartbeat's ``triton`` object.

Shape (read by the control plane's /metrics)::

    {"models": {"<model>": {"success": int, "failure": int, "inference_count": int,
                            "exec_count": int, "request_us": float, "queue_us": float,
                            "compute_input_us": float, "compute_infer_us": float,
                            "compute_output_us": float, "avg_queue_ms": float | None,
                            "avg_compute_ms": float | None,
                            "versions": {"<v>": {...same counters...}}}},
     "gpu": {"<uuid>": {"utilization": float, "memory_used_bytes": float, ...}}}

Counters are cumulative since Triton started (a restart resets them).
"""

from __future__ import annotations

import logging
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

log = logging.getLogger(__name__)

# sample name -> key in the per-model dict
MODEL_COUNTERS: dict[str, str] = {
    "nv_inference_request_success": "success",
    "nv_inference_request_failure": "failure",
    "nv_inference_count": "inference_count",
    "nv_inference_exec_count": "exec_count",
    "nv_inference_request_duration_us": "request_us",
    "nv_inference_queue_duration_us": "queue_us",
    "nv_inference_compute_input_duration_us": "compute_input_us",
    "nv_inference_compute_infer_duration_us": "compute_infer_us",
    "nv_inference_compute_output_duration_us": "compute_output_us",
}
_INTEGER_KEYS = {"success", "failure", "inference_count", "exec_count"}
GPU_GAUGES: dict[str, str] = {
    "nv_gpu_utilization": "utilization",
    "nv_gpu_memory_used_bytes": "memory_used_bytes",
    "nv_gpu_memory_total_bytes": "memory_total_bytes",
    "nv_gpu_power_usage": "power_w",
}


def _empty() -> dict[str, Any]:
    return {key: 0 if key in _INTEGER_KEYS else 0.0 for key in MODEL_COUNTERS.values()}


def _finish(counts: dict[str, Any]) -> None:
    for key in _INTEGER_KEYS:
        counts[key] = int(counts[key])
    success = counts["success"]
    counts["avg_queue_ms"] = round(counts["queue_us"] / success / 1000, 3) if success else None
    counts["avg_compute_ms"] = (
        round(counts["compute_infer_us"] / success / 1000, 3) if success else None
    )


def _sample_name(name: str) -> str:
    # prometheus_client may present counters with a `_total` suffix.
    return name[: -len("_total")] if name.endswith("_total") else name


def parse_triton_metrics(text: str) -> dict[str, Any]:
    """Per-model counters (summed over versions and failure reasons) and GPU gauges."""
    models: dict[str, dict[str, Any]] = {}
    gpus: dict[str, dict[str, float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            name = _sample_name(sample.name)
            labels = sample.labels
            if name in MODEL_COUNTERS and "model" in labels:
                key = MODEL_COUNTERS[name]
                model = models.setdefault(labels["model"], {**_empty(), "versions": {}})
                model[key] += sample.value
                version = model["versions"].setdefault(labels.get("version", ""), _empty())
                version[key] += sample.value
            elif name in GPU_GAUGES and "gpu_uuid" in labels:
                gpus.setdefault(labels["gpu_uuid"], {})[GPU_GAUGES[name]] = sample.value
    for model in models.values():
        _finish(model)
        for version in model["versions"].values():
            _finish(version)
    out: dict[str, Any] = {"models": models}
    if gpus:
        out["gpu"] = gpus
    return out


async def scrape_triton_metrics(
    client: httpx.AsyncClient, url: str, timeout_s: float = 5.0
) -> dict[str, Any]:
    """Scrape ``url`` (``http://127.0.0.1:<metrics port>/metrics``); ``{}`` when unreachable."""
    try:
        resp = await client.get(url, timeout=timeout_s)
        resp.raise_for_status()
    except httpx.HTTPError as exc:
        log.debug("Triton metrics unavailable at %s: %s", url, exc)
        return {}
    try:
        return parse_triton_metrics(resp.text)
    except ValueError:
        log.warning("cannot parse Triton metrics from %s", url, exc_info=True)
        return {}
