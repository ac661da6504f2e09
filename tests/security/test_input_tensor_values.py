# ruff: noqa: F403, F405 - fixtures and helpers come from input_fixtures
"""Issue 12 item 6: tensor values are checked against the datatype, not only counted: 422
naming the tensor and the element, on /v1/jobs, /v1/models/{m}/infer and /v2 (JSON and the
binary extension). NaN/Infinity never reach a runner as null."""

from __future__ import annotations

import json
import math
import struct
from typing import Any

import httpx
import pytest
from input_fixtures import *

BAD_FP32 = [
    ("NaN", 2, "is not a finite number"),
    ("Infinity", 2, "is not a finite number"),
    ("-Infinity", 2, "is not a finite number"),
    ('"x"', 2, "is not a number"),
    ("true", 2, "is not a number"),
    ("1e39", 2, "out of range for FP32"),
    ("null", 2, "is not a number"),
]


def v1_job_text(value: str) -> str:
    """add_sub's job with element 2 of INPUT1 written as the raw JSON ``value``."""
    return (
        '{"model": "add_sub", "inputs": ['
        '{"name": "INPUT0", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]},'
        '{"name": "INPUT1", "datatype": "FP32", "shape": [1, 4], "data": [1, 1, '
        + value
        + ", 1]}]}"
    )


@pytest.mark.parametrize(("value", "index", "why"), BAD_FP32)
async def test_v1_job_values_checked(
    client: httpx.AsyncClient, model: dict[str, str], value: str, index: int, why: str
) -> None:
    r = await client.post("/v1/jobs", content=v1_job_text(value), headers=model)
    err = assert_error(r, 422, "invalid_request")
    assert "'INPUT1'" in err["message"] and f"element {index}" in err["message"], err
    assert why in err["message"]
    assert err["details"][0]["field"] == f"inputs[1].data[{index}]"
    assert (await client.get("/v1/jobs", headers=model)).json()["jobs"] == []


async def test_v1_infer_values_checked(client: httpx.AsyncClient, model: dict[str, str]) -> None:
    text = v1_job_text("NaN").replace('"model": "add_sub", ', "")
    r = await client.post("/v1/models/add_sub/infer", content=text, headers=model)
    err = assert_error(r, 422, "invalid_request")
    assert "'INPUT1'" in err["message"] and "element 2" in err["message"]


def v2_body(value: str) -> str:
    return (
        '{"inputs": ['
        '{"name": "INPUT0", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]},'
        '{"name": "INPUT1", "datatype": "FP32", "shape": [1, 4], "data": [1, 1, '
        + value
        + ", 1]}]}"
    )


@pytest.mark.parametrize(("value", "index", "why"), BAD_FP32)
async def test_v2_json_values_checked(
    client: httpx.AsyncClient, model: dict[str, str], value: str, index: int, why: str
) -> None:
    r = await client.post("/v2/models/add_sub/infer", content=v2_body(value), headers=model)
    assert r.status_code == 422, r.text
    body = r.json()
    assert set(body) >= {"error", "code"} and body["code"] == "invalid_request"
    assert "'INPUT1'" in body["error"] and f"element {index}" in body["error"], body
    assert why in body["error"]


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
async def test_v2_binary_values_checked(
    client: httpx.AsyncClient, model: dict[str, str], bad: float
) -> None:
    raw0 = struct.pack("<4f", 1, 2, 3, 4)
    raw1 = struct.pack("<4f", 1, bad, 1, 1)
    head: dict[str, Any] = {
        "inputs": [
            {"name": n, "datatype": "FP32", "shape": [1, 4], "parameters": {"binary_data_size": 16}}
            for n in ("INPUT0", "INPUT1")
        ]
    }
    text = json.dumps(head).encode()
    r = await client.post(
        "/v2/models/add_sub/infer",
        content=text + raw0 + raw1,
        headers={
            **model,
            "Content-Type": "application/octet-stream",
            "Inference-Header-Content-Length": str(len(text)),
        },
    )
    assert r.status_code == 422, r.text
    assert "'INPUT1'" in r.json()["error"] and "element 1" in r.json()["error"]


@pytest.mark.parametrize(
    ("datatype", "values", "index", "why"),
    [
        ("INT8", [1, 128], 1, "out of range -128..127"),
        ("UINT8", [-1, 2], 0, "out of range 0..255"),
        ("INT32", [1, 2.5], 1, "is not an integer"),
        ("INT64", [True, 1], 0, "is not an integer"),
        ("UINT64", [2**64, 1], 0, "out of range"),
        ("BOOL", [True, 1], 1, "is not a boolean"),
        ("BYTES", ["a", 3], 1, "is not a string"),
        ("FP16", [1.0, 70000.0], 1, "out of range for FP16"),
    ],
)
def test_values_per_datatype(datatype: str, values: list[Any], index: int, why: str) -> None:
    from control_plane.errors import InvalidRequest
    from control_plane.services.tensors import checked_count

    with pytest.raises(InvalidRequest) as exc:
        checked_count("T", "inputs[0]", datatype, [values])
    assert f"element {index}" in exc.value.message and why in exc.value.message
    ok = {"INT8": [-128, 127], "UINT64": [0, 2**64 - 1], "BOOL": [True, False]}
    assert checked_count("T", "inputs[0]", datatype, ok.get(datatype, [])) == len(
        ok.get(datatype, [])
    )
