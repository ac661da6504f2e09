"""``job_views._Construct``: the same model as pydantic's ``model_construct``, field by field."""

from __future__ import annotations

from typing import Any

import pytest
from gpufleet.wire import LeasedJob, OutputRequest, Tensor
from pydantic import BaseModel

from control_plane.services.job_views import _Construct

LEASED: dict[str, Any] = {
    "id": "job_1",
    "lease_token": "t",
    "lease_expires_at": "2026-01-01T00:00:00.000Z",
    "model": "m",
    "model_version": "1",
    "inputs": [],
    "outputs": None,
    "parameters": {"p": 1},
    "timeout_s": 10,
    "attempt": 1,
    "deadline_at": None,
    "input_urls": {},
    "outputs_upload": None,
    "request_id": "r",
}


@pytest.mark.parametrize(
    ("cls", "values"),
    [
        (Tensor, {"name": "a", "datatype": "FP32", "shape": [1, 2], "data": [1, 2]}),
        (
            Tensor,
            {"name": "a", "datatype": "FP32", "shape": [1], "data_ref": "x", "parameters": {}},
        ),
        (OutputRequest, {"name": "o"}),
        (LeasedJob, LEASED),
        # pydantic's own path: defaults with a factory left out, an unknown field
        (LeasedJob, {k: v for k, v in LEASED.items() if k not in ("parameters", "input_urls")}),
        (Tensor, {"name": "a", "bogus": 1}),
    ],
)
def test_construct_builds_what_model_construct_builds(
    cls: type[BaseModel], values: dict[str, Any]
) -> None:
    expected = cls.model_construct(**dict(values))
    got = _Construct(cls)(dict(values))
    assert type(got) is cls
    assert list(got.__dict__.items()) == list(expected.__dict__.items())
    assert got.model_fields_set == expected.model_fields_set
    assert got.__pydantic_extra__ == expected.__pydantic_extra__
    assert got.__pydantic_private__ == expected.__pydantic_private__
    assert got.model_dump_json() == expected.model_dump_json()
    assert got.model_dump_json(exclude_unset=True) == expected.model_dump_json(exclude_unset=True)
    assert got == expected
