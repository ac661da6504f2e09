"""The SDK's transport-free streaming pieces (gpufleet/streaming.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from gpufleet.errors import InvalidRequestError, JobFailedError, NotFoundError
from gpufleet.streaming import (
    JobStreamState,
    SSEDecoder,
    SSEEvent,
    generate_body,
    generate_chunk,
    generate_stream_path,
)


def events(text: str) -> list[SSEEvent]:
    decoder = SSEDecoder()
    out = [decoder.feed(line) for line in text.split("\n")]
    return [e for e in out if e is not None]


def test_decoder_follows_the_event_stream_rules() -> None:
    text = (
        ": keep-alive\n\n"
        'event: chunk\nid: 1-0\ndata: {"a":\ndata: 1}\n\n'
        "data: plain\n\n"
        "id: stray\n\n"  # no data: no event
        "data:no-space\n\n"
    )
    got = events(text)
    assert got[0] == SSEEvent("chunk", '{"a":\n1}', "1-0")
    assert got[1] == SSEEvent("message", "plain", None)
    assert got[2] == SSEEvent("message", "no-space", None)
    assert len(got) == 3


def test_generate_body_and_path() -> None:
    body = generate_body(
        {"PROMPT": "hi", "IDS": np.array([[1, 2]], np.int32), "RAW": b"x",
         "WORDS": np.array([b"a", "b"], dtype=object)},
        {"temperature": 0.5},
    )  # fmt: skip
    assert body == {"PROMPT": "hi", "IDS": [[1, 2]], "RAW": "x", "WORDS": ["a", "b"],
                    "parameters": {"temperature": 0.5}}  # fmt: skip
    assert generate_stream_path("m", None) == "/v2/models/m/generate_stream"
    assert generate_stream_path("m", "2") == "/v2/models/m/versions/2/generate_stream"


def test_generate_chunks_and_errors() -> None:
    data = {"model_name": "m", "model_version": "1", "TOKEN": "hi", "LOGITS": [0.5, 0.25]}
    chunk = generate_chunk(SSEEvent("message", json.dumps(data)), 3)
    assert (chunk.index, chunk.model, chunk.version) == (3, "m", "1")
    assert list(chunk.outputs["TOKEN"]) == ["hi"]
    np.testing.assert_array_equal(chunk.outputs["LOGITS"], [0.5, 0.25])
    bad = {"error": "input refused", "code": "invalid_input", "status": 400}
    with pytest.raises(InvalidRequestError, match="input refused"):
        generate_chunk(SSEEvent("message", json.dumps(bad)), 0)


def test_job_stream_state_tracks_resume_point_and_end() -> None:
    state = JobStreamState("job_1", after="1-0")
    out = {"name": "TOKEN", "datatype": "BYTES", "shape": [1], "data": ["b"]}
    view = {"job_id": "job_1", "attempt": 1, "seq": 1, "outputs": [out]}
    chunk = state.on_event(SSEEvent("chunk", json.dumps(view), "1-1"))
    assert chunk is not None and chunk.event_id == "1-1" and state.after == "1-1"
    assert chunk.outputs["TOKEN"].tolist() == [b"b"] and chunk.attempt == 1
    assert state.on_event(SSEEvent("attempt", '{"attempt": 2}')) is None
    job = {"id": "job_1", "status": "CANCELLED", "model": "m", "created_at": "2026-01-01T00:00:00Z"}
    with pytest.raises(JobFailedError):
        state.on_event(SSEEvent("end", json.dumps(job)))
    assert state.done
    gone = {"error": {"code": "not_found", "message": "gone"}, "status": 404}
    with pytest.raises(NotFoundError):
        JobStreamState("job_2").on_event(SSEEvent("error", json.dumps(gone)))
