"""Pure parts of the streaming services: generate bodies → tensors, events, positions."""

from __future__ import annotations

import pytest

from control_plane.errors import InvalidRequest
from control_plane.services.generate import generate_event, generate_inputs
from control_plane.services.streams import parse_position

INPUTS = [
    {"name": "PROMPT", "datatype": "BYTES", "dims": [1]},
    {"name": "IDS", "datatype": "INT32", "dims": [-1]},
    {"name": "GRID", "datatype": "FP32", "dims": [2, 2]},
]


def test_generate_inputs_take_shapes_from_the_config() -> None:
    body = {"PROMPT": "hi", "IDS": [1, 2, 3], "GRID": [[1, 2], [3, 4]], "parameters": {"t": 1}}
    tensors, params = generate_inputs(body, INPUTS, 0)
    got = {t.name: (t.datatype, t.shape, t.data) for t in tensors}
    assert got == {
        "PROMPT": ("BYTES", [1], ["hi"]),
        "IDS": ("INT32", [3], [1, 2, 3]),
        "GRID": ("FP32", [2, 2], [1, 2, 3, 4]),
    }
    assert params == {"t": 1}
    batched, _ = generate_inputs({"IDS": [1, 2]}, INPUTS, 8)
    assert batched[0].shape == [1, 2]


@pytest.mark.parametrize(
    ("body", "field"),
    [({"NOPE": 1}, "NOPE"), ({}, "body"), ({"PROMPT": "x", "parameters": [1]}, "parameters")],
)
def test_generate_inputs_name_the_bad_field(body: dict[str, object], field: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        generate_inputs(body, INPUTS, 0)
    assert info.value.details[0]["field"] == field


def test_generate_event_is_tritons_form() -> None:
    outputs = [
        {"name": "TOKEN", "datatype": "BYTES", "shape": [1], "data": ["a"]},
        {"name": "P", "datatype": "FP32", "shape": [2], "data": [0.5, 0.5]},
    ]
    assert generate_event("m", "1", outputs) == {
        "model_name": "m", "model_version": "1", "TOKEN": "a", "P": [0.5, 0.5]
    }  # fmt: skip


def test_positions() -> None:
    assert parse_position("2-15", "after") == (2, 15)
    assert parse_position(" ", "after") is None and parse_position(None, "after") is None
    for bad in ("4", "a-1", "1-", "-1-2"):
        with pytest.raises(InvalidRequest):
            parse_position(bad, "Last-Event-ID")


def test_streaming_routes_are_in_the_openapi_schema() -> None:
    from control_plane.api.openapi import build_openapi
    from control_plane.app import routes

    doc = build_openapi(routes(), "test")
    stream = doc["paths"]["/v1/jobs/{job_id}/stream"]["get"]
    content = stream["responses"]["200"]["content"]
    assert content["text/event-stream"]["schema"] == {
        "$ref": "#/components/schemas/StreamChunkView"
    }
    assert {p["name"] for p in stream["parameters"]} >= {"job_id", "after", "Last-Event-ID"}
    for path in ("/v2/models/{model}/generate_stream",
                 "/v2/models/{model}/versions/{version}/generate_stream"):  # fmt: skip
        assert "text/event-stream" in doc["paths"][path]["post"]["responses"]["200"]["content"]
    chunks = doc["paths"]["/v1/runners/{runner_id}/chunks"]["post"]
    assert chunks["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "ChunksRequest"
    )
