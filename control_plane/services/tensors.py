"""Check a job's tensors against the model's stored config before the job is queued.

Every error is an ``InvalidRequest`` whose field points at the tensor (``inputs[1].shape``)
and whose message names it, so a client sees which tensor is wrong and why.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable, Iterator
from typing import Any

from gpufleet.wire import OutputRequest, Tensor

from control_plane.errors import InvalidRequest, PayloadTooLarge


def _flatten(data: Any) -> Iterator[Any]:
    if isinstance(data, list):
        for x in data:
            yield from _flatten(x)
    else:
        yield data


def element_count(data: list[Any]) -> int:
    """Number of scalars in a flat or nested (row-major) data list."""
    return sum(1 for _ in _flatten(data))


_INT_RANGES = {
    **{f"INT{b}": (-(2 ** (b - 1)), 2 ** (b - 1) - 1) for b in (8, 16, 32, 64)},
    **{f"UINT{b}": (0, 2**b - 1) for b in (8, 16, 32, 64)},
}
_FLOAT_MAX = {"FP16": 65504.0, "FP32": 3.4028234663852886e38, "FP64": sys.float_info.max}


def _bad_value(datatype: str, x: Any) -> str | None:
    """None when ``x`` is a valid JSON value of ``datatype``, else what is wrong with it."""
    kind = type(x)
    if datatype in _FLOAT_MAX:
        if kind is not float and kind is not int:
            return f"{_shown(x)} is not a number"
        if kind is float and not math.isfinite(x):
            return f"{x} is not a finite number"
        if abs(x) > _FLOAT_MAX[datatype]:
            return f"{_shown(x)} is out of range for {datatype}"
        return None
    if datatype in _INT_RANGES:
        if kind is not int:
            return f"{_shown(x)} is not an integer"
        lo, hi = _INT_RANGES[datatype]
        return None if lo <= x <= hi else f"{_shown(x)} is out of range {lo}..{hi}"
    if datatype == "BOOL":
        return None if kind is bool else f"{_shown(x)} is not a boolean"
    if datatype == "BYTES":
        return None if kind is str else f"{_shown(x)} is not a string"
    return None  # pragma: no cover - the wire's Datatype lists every type above


def _shown(x: Any) -> str:
    text = json.dumps(x, allow_nan=True)
    return text if len(text) <= 40 else text[:37] + "..."


def _flat(data: list[Any]) -> list[Any]:
    """``data``'s scalars in row-major order (``_flatten``, one level per pass: no generator
    frame per element)."""
    flat = data
    while list in set(map(type, flat)):  # (C-level passes: no Python call per element)
        flat = [y for x in flat for y in (x if type(x) is list else (x,))]
    return flat


def _all_valid(datatype: str, flat: list[Any]) -> bool:
    """True when every scalar of ``flat`` is valid for ``datatype`` (``_bad_value`` of each is
    None), checked by C-level passes over the list; False: look at each (the error names the
    first bad one)."""
    kinds = set(map(type, flat))
    if datatype in _FLOAT_MAX:
        try:
            return (
                kinds <= {float, int}
                and all(map(math.isfinite, flat))
                and max(map(abs, flat), default=0) <= _FLOAT_MAX[datatype]
            )
        except OverflowError:  # an integer past any float: the slow path says which
            return False
    if datatype in _INT_RANGES:
        lo, hi = _INT_RANGES[datatype]
        return kinds <= {int} and (not flat or (lo <= min(flat) and max(flat) <= hi))
    if datatype == "BOOL":
        return kinds <= {bool}
    if datatype == "BYTES":
        return kinds <= {str}
    return False


def checked_count(name: str, where: str, datatype: str, data: list[Any]) -> int:
    """Number of scalars in ``data``, each checked against ``datatype`` (numbers for FP*,
    finite and in range; integers in range for INT*/UINT*; booleans for BOOL; strings for
    BYTES); ``InvalidRequest`` naming the tensor and the element's flat index otherwise."""
    flat = _flat(data)
    if _all_valid(datatype, flat):
        return len(flat)
    count = 0
    for x in _flatten(data):
        why = _bad_value(datatype, x)
        if why is not None:
            raise InvalidRequest(
                f"input {name!r}: element {count}: {why} ({datatype} tensor)",
                field=f"{where}.data[{count}]",
            )
        count += 1
    return count


def inline_bytes(tensors: list[Tensor]) -> int:
    """Size of the tensors' JSON, as the limit on inline payloads counts it."""
    return sum([len(_compact(t.model_dump(exclude_none=True))) for t in tensors])


_compact = json.JSONEncoder(separators=(",", ":")).encode  # json.dumps(x, separators=…)


def _shape_matches(shape: list[int], dims: list[int], max_batch_size: int) -> str | None:
    """None when ``shape`` fits the config, else why not."""
    expected = list(dims)
    if max_batch_size > 0:
        if len(shape) != len(dims) + 1:
            return f"rank {len(shape)} != {len(dims) + 1} (batch dimension + {dims})"
        if not 1 <= shape[0] <= max_batch_size:
            return f"batch size {shape[0]} is not in 1..{max_batch_size}"
        shape = shape[1:]
    elif len(shape) != len(expected):
        return f"rank {len(shape)} != {len(expected)} (dims {dims})"
    for got, want in zip(shape, expected, strict=True):
        if want != -1 and got != want:
            return f"shape {shape} does not match dims {dims}"
    return None


def validate_tensors(
    inputs: list[Tensor],
    outputs: list[OutputRequest] | None,
    config_inputs: list[dict[str, Any]],
    config_outputs: list[dict[str, Any]],
    max_batch_size: int,
    *,
    max_inline_bytes: int | None,
    check_payload: Callable[[int, Tensor], None],
) -> None:
    """Raise InvalidRequest (or PayloadTooLarge) for the first tensor that does not fit.

    ``max_inline_bytes``: the limit of inline tensor JSON a stored job may hold; None when
    nothing is stored (synchronous dispatch: the request body limit applies instead)."""
    by_name = {c["name"]: c for c in config_inputs}
    seen: set[str] = set()
    for i, t in enumerate(inputs):
        where = f"inputs[{i}]"
        spec = by_name.get(t.name)
        if spec is None:
            known = ", ".join(sorted(by_name)) or "none"
            raise InvalidRequest(
                f"input {t.name!r} is not an input of the model (inputs: {known})",
                field=f"{where}.name",
            )
        if t.name in seen:
            raise InvalidRequest(f"input {t.name!r} is given twice", field=f"{where}.name")
        seen.add(t.name)
        if t.datatype != spec["datatype"]:
            raise InvalidRequest(
                f"input {t.name!r}: datatype {t.datatype} != {spec['datatype']}",
                field=f"{where}.datatype",
            )
        why = _shape_matches(list(t.shape), list(spec["dims"]), max_batch_size)
        if why:
            raise InvalidRequest(f"input {t.name!r}: {why}", field=f"{where}.shape")
        if (t.data is None) == (t.data_ref is None):
            raise InvalidRequest(
                f"input {t.name!r}: give exactly one of data and data_ref", field=f"{where}.data"
            )
        if t.data is not None:
            count, want = checked_count(t.name, where, t.datatype, t.data), math.prod(t.shape)
            if count != want:
                raise InvalidRequest(
                    f"input {t.name!r}: {count} data elements, shape {t.shape} needs {want}",
                    field=f"{where}.data",
                )
        else:  # data_ref: uploaded, of this tenant, and the size datatype x shape needs
            check_payload(i, t)
    missing = [c["name"] for c in config_inputs if c["name"] not in seen and not c.get("optional")]
    if missing:
        raise InvalidRequest(
            f"required input {missing[0]!r} is missing",
            field="inputs",
            details=[
                {"field": "inputs", "message": f"required input {m!r} is missing"} for m in missing
            ],
        )
    out_names = {c["name"] for c in config_outputs}
    for i, o in enumerate(outputs or []):
        if o.name not in out_names:
            known = ", ".join(sorted(out_names)) or "none"
            raise InvalidRequest(
                f"output {o.name!r} is not an output of the model (outputs: {known})",
                field=f"outputs[{i}].name",
            )
    size = inline_bytes(inputs) if max_inline_bytes is not None else 0
    if max_inline_bytes is not None and size > max_inline_bytes:
        raise PayloadTooLarge(
            f"inline tensors are {size} bytes of JSON, over the {max_inline_bytes}-byte limit: "
            "upload large tensors as payloads and refer to them with data_ref",
            details=[{"field": "inputs", "message": "use data_ref for large tensors"}],
        )
