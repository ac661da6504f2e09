"""Large tensors through the bucket, on the runner's side (api-v1 "Jobs").

- :func:`fetch_inputs`: a leased job's ``data_ref`` inputs are fetched from the presigned
  GETs in ``input_urls`` (straight from the bucket) and decoded into arrays.
- :func:`store_outputs`: outputs whose JSON would exceed ``outputs_upload.max_inline_bytes``
  are PUT to ``outputs_upload.url`` in the binary form of :func:`gpufleet.tensors.encode_outputs`;
  the job is then completed with ``outputs_ref`` instead of inline ``outputs``.

The control plane signs the URLs and never sees the bytes.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import ssl

import httpx
import numpy as np
from gpufleet.tensors import encode_outputs, from_raw_bytes
from gpufleet.wire import LeasedJob, Tensor

from runner.tensors import ArrayTensor, TensorError, to_numpy

log = logging.getLogger(__name__)
ATTEMPTS = 4
RETRY_BASE_S = 0.5
TIMEOUT = httpx.Timeout(30.0, read=300.0, write=300.0)


class PayloadError(Exception):
    """A payload could not be fetched from or stored in the bucket."""


async def _transfer(
    method: str, url: str, verify: ssl.SSLContext | bool = True, **kwargs: object
) -> httpx.Response:
    """One request to a presigned URL, retrying connection errors and 5xx with jitter."""
    delay = RETRY_BASE_S
    async with httpx.AsyncClient(timeout=TIMEOUT, follow_redirects=False, verify=verify) as http:
        for attempt in range(1, ATTEMPTS + 1):
            try:
                resp = await http.request(method, url, **kwargs)  # type: ignore[arg-type]
            except httpx.TransportError as exc:
                problem = repr(exc)
            else:
                if resp.status_code < 300:
                    return resp
                problem = f"HTTP {resp.status_code}: {resp.text[:300]}"
                if resp.status_code < 500:
                    break
            if attempt < ATTEMPTS:
                log.info("%s payload failed (%s); retrying", method, problem)
                await asyncio.sleep(delay * (0.5 + random.random()))
                delay *= 2
    raise PayloadError(f"{method} of a payload failed: {problem}")


async def fetch_inputs(job: LeasedJob, verify: ssl.SSLContext | bool = True) -> LeasedJob:
    """``job`` with every ``data_ref`` input fetched and held as an array (others unchanged)."""
    if not any(t.data_ref is not None for t in job.inputs):
        return job
    resolved: list[Tensor] = []
    for tensor in job.inputs:
        if tensor.data_ref is None:
            resolved.append(tensor)
            continue
        url = job.input_urls.get(tensor.name)
        if url is None:
            raise PayloadError(f"input {tensor.name!r}: the lease carries no URL for its data_ref")
        resp = await _transfer("GET", url, verify)
        try:
            array = from_raw_bytes(resp.content, tensor.datatype, list(tensor.shape))
        except ValueError as exc:
            raise TensorError(f"input {tensor.name!r}: {exc}") from exc
        resolved.append(ArrayTensor.of(tensor, array))
    return job.model_copy(update={"inputs": resolved})


# Characters an element of a numeric tensor takes in JSON at most, with its comma: a float's
# repr is at most 24 ("-2.2250738585072014e-308"), an int64 20, NaN/Infinity 9.
_MAX_ELEMENT_CHARS = 25


def _upper_bound(outputs: list[Tensor]) -> int | None:
    """A bound above the JSON size of ``outputs`` without writing it (numeric tensors that
    hold their array); None when there is none that cheap."""
    total = 2
    for t in outputs:
        array = t.array if isinstance(t, ArrayTensor) else None
        if array is None or t.datatype == "BYTES" or t.parameters or t.data_ref is not None:
            return None
        # {"name":…,"datatype":"UINT64","shape":[…],"data":[…]}, and a comma
        total += 60 + len(json.dumps(t.name)) + 21 * len(t.shape)
        total += _MAX_ELEMENT_CHARS * int(array.size)
    return total


def _inline_size(outputs: list[Tensor], limit: int) -> int:
    """The JSON size of ``outputs``, or a bound above it when that fits ``limit`` already
    (stops counting past ``limit``; raw bytes bound it below)."""
    bound = _upper_bound(outputs)
    if bound is not None and bound <= limit:
        return bound
    total = 0
    for t in outputs:
        array = t.array if isinstance(t, ArrayTensor) else None
        if array is not None and t.datatype != "BYTES":
            total += int(array.size) * 2  # at least "0," per element
        if total > limit:
            return total
    return len(
        json.dumps([t.model_dump(exclude_none=True) for t in outputs], separators=(",", ":"))
    )


async def store_outputs(
    job: LeasedJob, outputs: list[Tensor], verify: ssl.SSLContext | bool = True
) -> tuple[list[Tensor] | None, str | None]:
    """``(outputs, None)`` when they fit inline, else ``(None, outputs_ref)`` after the upload."""
    target = job.outputs_upload
    if target is None or _inline_size(outputs, target.max_inline_bytes) <= target.max_inline_bytes:
        return outputs, None
    arrays: list[tuple[str, str, np.ndarray]] = [(t.name, t.datatype, to_numpy(t)) for t in outputs]
    body = encode_outputs(arrays)
    await _transfer(target.method, target.url, verify, content=body, headers=target.headers)
    log.info("job %s: %d bytes of outputs stored in the bucket", job.id, len(body))
    return None, target.ref
