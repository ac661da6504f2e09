"""Triton's generate extension, streamed: ``POST /v2/models/{m}/generate_stream``.

The body is Triton's: ``{"<input name>": value, …, "parameters": {…}}`` where a value is a
scalar or a (nested) list, matched by name to the model's inputs (shape from the config's
dims when they fit, else ``[len]``; a batching model gets a batch of 1). Each model response
becomes one event ``{"model_name", "model_version", "<output name>": value, …}`` (a
one-element output as a scalar, as Triton's generate endpoint answers).

Two paths, as for synchronous inference (``services/inference.py``):
- **dispatch**: a runner connected to this replica serves the READY version → a ``stream``
  frame; each response comes back as it is produced. The caller hanging up cancels the
  request at the runner, and the runner cancels it in Triton (the model stops).
- **job**: no such runner here → a durable job whose chunks are followed
  (``services/streams.py``). Hanging up cancels the job, which stops its runner.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Any

from gpufleet.wire import JobRequest, Tensor

from control_plane.errors import Conflict, InvalidRequest, NotFound
from control_plane.services.dispatch import Dispatcher
from control_plane.services.inference import outcome_error
from control_plane.services.principal import Principal
from control_plane.services.streams import ChunkEvent, EndEvent, StreamService
from control_plane.settings import Settings
from control_plane.storage.protocols import ModelVersionRecord

__all__ = ["GenerateService", "PreparedStream", "generate_event", "generate_inputs"]

log = logging.getLogger(__name__)


def _flatten(value: Any) -> list[Any]:
    if isinstance(value, list):
        out: list[Any] = []
        for v in value:
            out += _flatten(v)
        return out
    return [value]


def generate_inputs(
    body: dict[str, Any], inputs: list[dict[str, Any]], max_batch_size: int
) -> tuple[list[Tensor], dict[str, Any]]:
    """The input tensors and request parameters of a generate body (see the module
    docstring); ``InvalidRequest`` names the field that does not fit."""
    params = body.get("parameters") or {}
    if not isinstance(params, dict):
        raise InvalidRequest("parameters must be an object", field="parameters")
    by_name = {i["name"]: i for i in inputs}
    tensors: list[Tensor] = []
    for name, value in body.items():
        if name == "parameters":
            continue
        spec = by_name.get(name)
        if spec is None:
            known = ", ".join(sorted(by_name)) or "none"
            raise InvalidRequest(
                f"{name!r} is not an input of the model (inputs: {known})", field=name
            )
        data = _flatten(value)
        dims = [int(d) for d in spec.get("dims") or []]
        fixed = dims and all(d > 0 for d in dims) and math.prod(dims) == len(data)
        shape = dims if fixed else [len(data)]
        if max_batch_size > 0:
            shape = [1, *shape]
        try:
            tensors.append(Tensor(name=name, datatype=spec["datatype"], shape=shape, data=data))
        except ValueError as exc:
            raise InvalidRequest(f"input {name!r}: {exc}", field=name) from exc
    if not tensors:
        raise InvalidRequest("the body names no input of the model", field="body")
    return tensors, params


def generate_event(model: str, version: str, outputs: list[Any]) -> dict[str, Any]:
    """One response as Triton's generate endpoint writes it."""
    event: dict[str, Any] = {"model_name": model, "model_version": version}
    for t in outputs:
        name, data = (t["name"], t.get("data")) if isinstance(t, dict) else (t.name, t.data)
        data = data or []
        event[name] = data[0] if len(data) == 1 else data
    return event


@dataclass
class PreparedStream:
    """A checked generate request: what :meth:`GenerateService.run` streams."""

    principal: Principal
    record: ModelVersionRecord
    job: JobRequest


class GenerateService:
    """See the module docstring. ``jobs``: the job service; ``streams``: job streams."""

    def __init__(
        self,
        settings: Settings,
        jobs: Any,
        dispatch: Dispatcher | None,
        streams: StreamService | None,
    ) -> None:
        self._settings = settings
        self._jobs = jobs
        self._dispatch = dispatch
        self._streams = streams

    async def prepare(
        self, p: Principal, model: str, version: str | None, body: dict[str, Any]
    ) -> PreparedStream:
        """Resolve the READY version and check the body (errors before the stream starts)."""
        rec = self._jobs.ready_target(p, model, version, cached_only=True)
        if rec is None:
            rec = await self._jobs.offload(self._jobs.ready_target, p, model, version)
        inputs, params = generate_inputs(body, rec.inputs, rec.max_batch_size)
        timeout = math.ceil(self._settings.stream_timeout_s)
        job = JobRequest(
            model=rec.name,
            model_version=rec.version,
            inputs=inputs,
            parameters=params,
            timeout_s=timeout,
            ttl_s=timeout,
            max_attempts=1,  # a stream the caller watches is not replayed behind its back
        )
        rec = await self._jobs.offload(self._jobs.infer_target, p, job) or rec
        return PreparedStream(p, rec, job)

    async def run(self, prep: PreparedStream) -> AsyncGenerator[dict[str, Any], None]:
        """The generate events of one request, as produced; raises the domain error that
        ends it (the route writes it as an error event)."""
        rec, job = prep.record, prep.job
        d = self._dispatch
        if d is not None and d.routable(rec.name, rec.version):
            request = {
                "inputs": [t.model_dump(exclude_none=True) for t in job.inputs],
                "parameters": job.parameters,
            }
            stream = d.stream(rec.name, rec.version, request, self._settings.stream_timeout_s)
            async with contextlib.aclosing(stream) as frames:
                async for frame in frames:
                    yield generate_event(rec.name, rec.version, frame.get("outputs") or [])
            return
        if self._streams is None:
            raise NotFound("streaming is not available on this control plane")
        async for event in self._durable(prep):
            yield event

    async def _durable(self, prep: PreparedStream) -> AsyncGenerator[dict[str, Any], None]:
        assert self._streams is not None
        p, job = prep.principal, prep.job
        view, _ = await self._jobs.offload(self._jobs.submit, p, job, None)
        ended = chunked = False
        version = job.model_version or ""
        try:
            async with contextlib.aclosing(self._streams.follow(p, view.id, None)) as events:
                async for event in events:
                    if isinstance(event, ChunkEvent):
                        chunked = True
                        yield generate_event(job.model, version, event.chunk.outputs)
                    elif isinstance(event, EndEvent):
                        ended = True
                        if event.job.status != "SUCCEEDED":
                            raise outcome_error(event.job, self._settings.stream_timeout_s)
                        if not chunked:  # a model that is not decoupled: its one answer
                            yield generate_event(job.model, version, event.job.outputs or [])
                        return
        finally:
            if not ended:  # the caller hung up: stop the job (and its runner's request)
                with contextlib.suppress(Conflict, NotFound):
                    await self._jobs.offload(self._jobs.cancel, p, view.id)
