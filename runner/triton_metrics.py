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

The runner reads this text every heartbeat. prometheus_client's parser spends ~65 µs per
line (3.4 ms for a 53-line sample) and Triton writes lines for every family it has, so the
lines of the families used here are read by a small exact parser of the text format's sample
line (``name{label="value",...} value [timestamp]``, label values unescaped as the format
says); any such line it cannot read sends the whole text to prometheus_client's parser.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
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


_WANTED = frozenset(MODEL_COUNTERS) | frozenset(GPU_GAUGES)
_LINE = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?[ \t]+(\S+)(?:[ \t]+-?\d+)?[ \t]*")
_LABEL = re.compile(
    r'[ \t]*([a-zA-Z_][a-zA-Z0-9_]*)[ \t]*=[ \t]*"((?:[^"\\\n]|\\.)*)"[ \t]*(?:,|$)'
)
_ESCAPES = {"\\\\": "\\", '\\"': '"', "\\n": "\n"}


class _Unreadable(ValueError):
    """A line of a wanted family the small parser does not read: use prometheus_client's."""


def _labels(text: str) -> dict[str, str]:
    labels: dict[str, str] = {}
    end = 0
    for m in _LABEL.finditer(text):
        if m.start() != end:
            raise _Unreadable(text)
        end = m.end()
        value = m.group(2)
        if "\\" in value:
            value = re.sub(r"\\.", lambda e: _ESCAPES.get(e.group(0), e.group(0)), value)
        labels[m.group(1)] = value
    if end != len(text):
        raise _Unreadable(text)
    return labels


def _wanted_samples(text: str) -> Iterator[tuple[str, dict[str, str], float]]:
    """(name without ``_total``, labels, value) of the wanted families' sample lines."""
    for line in text.splitlines():
        if not line.strip() or line.lstrip()[0] == "#":
            continue
        head = line.split("{", 1)[0].split(None, 1)[0]
        if _sample_name(head) not in _WANTED:
            continue
        m = _LINE.fullmatch(line)
        if m is None:
            raise _Unreadable(line)
        try:
            value = float(m.group(3))
        except ValueError as exc:
            raise _Unreadable(line) from exc
        yield _sample_name(m.group(1)), _labels(m.group(2) or ""), value


def _library_samples(text: str) -> Iterator[tuple[str, dict[str, str], float]]:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            yield _sample_name(sample.name), sample.labels, sample.value


def parse_triton_metrics(text: str) -> dict[str, Any]:
    """Per-model counters (summed over versions and failure reasons) and GPU gauges."""
    try:
        return _summarize(list(_wanted_samples(text)))
    except _Unreadable:
        log.debug("Triton metrics: a line the small parser does not read; full parser used")
        return _summarize(list(_library_samples(text)))


def _summarize(samples: list[tuple[str, dict[str, str], float]]) -> dict[str, Any]:
    models: dict[str, dict[str, Any]] = {}
    gpus: dict[str, dict[str, float]] = {}
    for name, labels, value in samples:
        if name in MODEL_COUNTERS and "model" in labels:
            key = MODEL_COUNTERS[name]
            model = models.setdefault(labels["model"], {**_empty(), "versions": {}})
            model[key] += value
            version = model["versions"].setdefault(labels.get("version", ""), _empty())
            version[key] += value
        elif name in GPU_GAUGES and "gpu_uuid" in labels:
            gpus.setdefault(labels["gpu_uuid"], {})[GPU_GAUGES[name]] = value
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
