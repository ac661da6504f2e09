"""Frames of the runner's dispatch channel (``/v1/runners/{id}/channel``, a WebSocket).

Shared by the control plane (``control_plane/api/routes_channel.py``,
``services/dispatch.py``) and the runner (``runner/channel.py``). Frames are JSON text
objects with a ``type``, or binary for passthrough requests: a 4-byte big-endian length of a
JSON header object, the header, then the raw KServe bytes (an HTTP body or a serialized gRPC
``ModelInferRequest``/``ModelInferResponse``)::

    runner → control plane   hello / models {models: [{name, version}], capacity, draining,
                                             raw: ["grpc", "http"] (protocols passed through)}
                             lease {rid, body: LeaseRequest}
                             complete {rid, body: BatchCompleteRequest}
                             result {id, outputs, timings, runner_id}
                             error {id, code, message, runner_id}
                             binary result {id, timings, runner_id, header_length?,
                                            content_type?} + Triton's answer bytes
    control plane → runner   infer {id, model, version, inputs, outputs, parameters, timeout_s}
                             binary infer {id, model, version, timeout_s, protocol: http|grpc,
                                           header_length?, content_type?} + the caller's body
                             cancel {id}
                             reply {rid, status, body | error}  (to lease / complete)

``lease`` and ``complete`` are the job protocol's HTTP calls (``POST /v1/runners/{id}/lease``,
``…/complete``) carried by the channel while it is open: same bodies, same answers (``status``
is the HTTP status the route would give), no per-call signature (the channel was
authenticated when it opened and is closed when the runner is revoked). When the channel is
closed the runner makes the same calls over HTTP.
"""

from __future__ import annotations

import json
import struct
from typing import Any

__all__ = ["pack_frame", "unpack_frame"]

_LENGTH = struct.Struct(">I")


def pack_frame(header: dict[str, Any], body: bytes = b"") -> bytes:
    """A binary frame: the length of the JSON ``header``, the header, then ``body``."""
    head = json.dumps(header, separators=(",", ":")).encode()
    return b"".join((_LENGTH.pack(len(head)), head, body))


def unpack_frame(frame: bytes) -> tuple[dict[str, Any], bytes]:
    """``(header, body)`` of a :func:`pack_frame` frame; ValueError when malformed."""
    if len(frame) < _LENGTH.size:
        raise ValueError("binary frame shorter than its length prefix")
    (n,) = _LENGTH.unpack_from(frame)
    end = _LENGTH.size + n
    if end > len(frame):
        raise ValueError("binary frame header runs past the frame")
    header = json.loads(frame[_LENGTH.size : end])
    if not isinstance(header, dict):
        raise ValueError("binary frame header is not a JSON object")
    return header, frame[end:]
