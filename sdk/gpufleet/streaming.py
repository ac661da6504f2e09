"""Streamed outputs (docs/streaming.md), transport-free: what the blocking and asyncio
clients share.

- :class:`SSEDecoder` turns the lines of a ``text/event-stream`` body into events
  (the WHATWG rules: ``event``, ``data`` (joined lines), ``id``; comments ignored).
- A generate stream (``POST /v2/models/{m}/generate_stream``) gives one event per model
  response: :func:`generate_chunk` makes it a :class:`StreamChunk`.
- A job stream (``GET /v1/jobs/{id}/stream``) gives ``chunk`` events (``id``
  ``<attempt>-<seq>``, the resume point for ``Last-Event-ID``), ``attempt`` when a retried
  job starts over, ``end`` with the job, or ``error``: :class:`JobStreamState` follows them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np

from gpufleet._transport import seg
from gpufleet.errors import APIError, JobFailedError, error_from_response
from gpufleet.tensors import to_ndarray
from gpufleet.wire import JobView, StreamChunkView


def error_from_body(status: int, doc: Any) -> APIError:
    """The typed error of an error body (``{"error": {"code", "message"}}``)."""
    return error_from_response(httpx.Response(status, json=doc))


__all__ = [
    "JobStreamState",
    "SSEDecoder",
    "SSEEvent",
    "StreamChunk",
    "generate_body",
    "generate_chunk",
    "generate_stream_path",
    "stream_error",
]


@dataclass(frozen=True)
class StreamChunk:
    """One partial output: the outputs of one model response.

    ``outputs``: ``{"TOKEN": array, …}``. ``index``: 0, 1, … in this iteration. For a job
    stream also ``job_id``, ``attempt`` and ``event_id`` (``<attempt>-<seq>``: pass it as
    ``after`` to resume after this chunk)."""

    outputs: dict[str, np.ndarray[Any, Any]]
    index: int
    model: str | None = None
    version: str | None = None
    job_id: str | None = None
    attempt: int | None = None
    event_id: str | None = None


@dataclass(frozen=True)
class SSEEvent:
    event: str
    data: str
    id: str | None = None


@dataclass
class SSEDecoder:
    """Feed it the body's lines (without their line ends); it returns each complete event."""

    _event: str = ""
    _data: list[str] = field(default_factory=list)
    _id: str | None = None

    def feed(self, line: str) -> SSEEvent | None:
        if line == "":
            if not self._data:
                self._event, self._id = "", None
                return None
            event = SSEEvent(self._event or "message", "\n".join(self._data), self._id)
            self._event, self._data, self._id = "", [], None
            return event
        if line.startswith(":"):
            return None  # a comment (keep-alive)
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "event":
            self._event = value
        elif name == "data":
            self._data.append(value)
        elif name == "id":
            self._id = value
        return None


def _array(value: Any) -> np.ndarray[Any, Any]:
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return np.asarray(value, dtype=np.object_)
    if isinstance(value, str):
        return np.asarray([value], dtype=np.object_)
    return np.atleast_1d(np.asarray(value))


def generate_stream_path(model: str, version: str | None) -> str:
    """``/v2/models/{model}[/versions/{version}]/generate_stream``."""
    path = f"/v2/models/{seg(model)}"
    if version is not None:
        path += f"/versions/{seg(version)}"
    return path + "/generate_stream"


def generate_body(
    inputs: Mapping[str, Any], parameters: Mapping[str, Any] | None
) -> dict[str, Any]:
    """A generate request: each input as a JSON value (arrays as nested lists; bytes as
    UTF-8 text), ``parameters`` as Triton's request parameters."""
    body: dict[str, Any] = {}
    for name, value in inputs.items():
        if isinstance(value, bytes):
            value = value.decode()
        if isinstance(value, np.ndarray):
            value = (
                [v.decode() if isinstance(v, bytes) else v for v in value.reshape(-1)]
                if (value.dtype == np.object_)
                else value.tolist()
            )
        body[name] = value
    if parameters:
        body["parameters"] = dict(parameters)
    return body


def generate_chunk(event: SSEEvent, index: int) -> StreamChunk:
    """A generate event as a chunk; an error event raises the matching ``APIError``."""
    data = json.loads(event.data)
    if "error" in data:
        error = {"code": data.get("code") or "internal", "message": str(data["error"])}
        raise error_from_body(int(data.get("status") or 500), {"error": error})
    model = data.pop("model_name", None)
    version = data.pop("model_version", None)
    outputs = {k: _array(v) for k, v in data.items()}
    return StreamChunk(outputs, index, model=model, version=version)


class JobStreamState:
    """Follows a job stream: where to resume (``after``), the job at its end."""

    def __init__(self, job_id: str, after: str | None = None) -> None:
        self.job_id = job_id
        self.after = after
        self.job: JobView | None = None
        self.count = 0

    def on_event(self, event: SSEEvent) -> StreamChunk | None:
        """The chunk of a ``chunk`` event; None for others. ``end`` sets ``job`` (and raises
        ``JobFailedError`` unless SUCCEEDED); ``error`` raises the ``APIError``."""
        if event.event == "chunk":
            view = StreamChunkView.model_validate_json(event.data)
            self.after = event.id or f"{view.attempt}-{view.seq}"
            outputs = {t.name: to_ndarray(t) for t in view.outputs}
            chunk = StreamChunk(
                outputs, self.count, job_id=view.job_id, attempt=view.attempt,
                event_id=self.after,
            )  # fmt: skip
            self.count += 1
            return chunk
        if event.event == "end":
            self.job = JobView.model_validate_json(event.data)
            if self.job.status != "SUCCEEDED":
                raise JobFailedError(self.job)
            return None
        if event.event == "error":
            doc = json.loads(event.data)
            raise error_from_body(int(doc.get("status") or 500), doc)
        return None

    @property
    def done(self) -> bool:
        return self.job is not None


def stream_error(status: int, body: bytes) -> APIError:
    """The error of a stream request answered with an error status."""
    try:
        doc = json.loads(body)
    except ValueError:
        doc = {"error": {"code": "internal", "message": body[:500].decode(errors="replace")}}
    if isinstance(doc, dict) and isinstance(doc.get("error"), str):  # /v2 error form
        doc = {"error": {"code": doc.get("code") or "internal", "message": doc["error"]}}
    return error_from_body(status, doc)
