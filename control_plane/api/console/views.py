"""Plain data for the templates, shaped from the wire views (pure functions, no I/O)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
from gpufleet.wire import JobList, JobView, ModelVersionView, RunnerView, Tensor, TensorSpec

from control_plane.errors import InvalidRequest

# The API's runner status, in the words an operator reads it in.
STATE_WORDS = {"ONLINE": "healthy", "DRAINING": "draining", "OFFLINE": "lost", "REVOKED": "revoked"}
TERMINAL = ("SUCCEEDED", "FAILED", "CANCELLED", "TIMED_OUT")
JOB_STATUSES = ("QUEUED", "RUNNING", *TERMINAL)
PREVIEW_VALUES = 32
SINCE = {"15m": 900, "1h": 3600, "24h": 86_400, "7d": 7 * 86_400}  # the jobs page's time filter


def runner_state(r: RunnerView) -> str:
    return STATE_WORDS.get(r.status, r.status.lower())


def triton_state(r: RunnerView) -> str:
    ready = r.triton.get("ready")
    if ready is None:
        return "unknown"
    return "ready" if ready else "not ready"


@dataclass(frozen=True)
class Step:
    """One point of a job's timeline."""

    name: str
    at: str | None
    note: str = ""


def timeline(job: JobView) -> list[Step]:
    """queued -> running -> terminal, with what is known of each step."""
    steps = [Step("QUEUED", job.created_at, f"priority {job.priority}")]
    if job.started_at or job.status == "RUNNING":
        note = f"runner {job.runner_id}" if job.runner_id else ""
        if job.queue_ms is not None:
            note += f" · waited {job.queue_ms} ms"
        steps.append(Step("RUNNING", job.started_at, note.strip(" ·")))
    if job.status in TERMINAL:
        note = f"ran {job.run_ms} ms" if job.run_ms is not None else ""
        steps.append(Step(job.status, job.finished_at, note))
    return steps


def preview(t: Tensor) -> str:
    """The first values of a tensor, as text."""
    if t.data is None:
        return f"(in the bucket: {t.data_ref})" if t.data_ref else "(no data)"
    flat = np.asarray(t.data, dtype=object).reshape(-1).tolist()
    text = json.dumps(flat[:PREVIEW_VALUES])
    return text if len(flat) <= PREVIEW_VALUES else text[:-1] + ", …]"


def example_value(spec: TensorSpec) -> str:
    """A value the try-it form starts with: zeros of the input's shape, each variable
    dimension (-1, the batch too: the spec includes it) of size one."""
    shape = [1 if d < 0 else d for d in spec.shape]
    zero: Any = "" if spec.datatype in ("BYTES", "STRING") else 0
    return json.dumps(np.full(shape, zero, dtype=object).tolist())


def tensors_from_form(version: ModelVersionView, values: dict[str, str]) -> list[Tensor]:
    """The try-it form's fields (``input:<name>`` = a JSON array) as request tensors; the
    shape is the array's. Bad input names the field."""
    out: list[Tensor] = []
    for spec in version.inputs:
        field = f"input:{spec.name}"
        raw = values.get(field, "").strip()
        if not raw:
            raise InvalidRequest(f"{spec.name}: enter a JSON array", field=field)
        try:
            array = np.asarray(json.loads(raw), dtype=object)
        except (ValueError, TypeError) as exc:
            raise InvalidRequest(f"{spec.name}: not a JSON array ({exc})", field=field) from exc
        if array.ndim == 0:
            raise InvalidRequest(f"{spec.name}: enter an array, not a single value", field=field)
        try:
            out.append(
                Tensor(
                    name=spec.name,
                    datatype=spec.datatype,  # type: ignore[arg-type]
                    shape=list(array.shape),
                    data=array.reshape(-1).tolist(),
                )
            )
        except ValueError as exc:
            raise InvalidRequest(f"{spec.name}: {exc}", field=field) from exc
    return out


def parse_regions(text: str) -> list[str]:
    return [r.strip() for r in text.replace("\n", ",").split(",") if r.strip()]


def created_since(listing: JobList, since: str, now: float) -> tuple[list[JobView], str | None]:
    """The page's jobs created within ``since`` (a key of ``SINCE``; "" = all) and the cursor
    of the next page. Lists are newest first, so once a job is older than the window no later
    page can hold a newer one: paging stops there."""
    if not since:
        return listing.jobs, listing.next_cursor
    cutoff = now - SINCE[since]
    kept = [j for j in listing.jobs if (parse_time(j.created_at) or 0) >= cutoff]
    return kept, listing.next_cursor if len(kept) == len(listing.jobs) else None


def parse_time(value: str | None) -> float | None:
    if not value:
        return None
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
