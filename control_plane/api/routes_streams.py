"""Streaming routes (docs/streaming.md): server-sent events of partial outputs.

- ``GET /v1/jobs/{job_id}/stream``: a durable job's chunks in order, resumable with
  ``Last-Event-ID`` (or ``?after=``), then an ``end`` event with the job once terminal.
- ``POST /v2/models/{model}[/versions/{v}]/generate_stream``: Triton's generate extension,
  each model response a ``data:`` event as it is produced.
- ``POST /v1/runners/{runner_id}/chunks`` (HMAC-signed): a runner stores a running job's
  chunks (also carried by the runner channel as a ``chunks`` frame).

Errors found before a stream starts are ordinary JSON error answers (404, 422, …); an error
after it started is a last event (``error`` on the job stream, ``data: {"error": …}`` on
generate_stream, as Triton writes it).
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

from gpufleet._logs import bind
from gpufleet.wire import ChunksRequest, ChunksResponse, StreamChunkView, Tensor
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from control_plane.api.context import services
from control_plane.api.errors import STATUS_BY_CODE, failure_status
from control_plane.api.http import parse_body, send
from control_plane.api.job_protocol import append_chunks
from control_plane.api.kserve import _model_path, kserve_errors
from control_plane.api.kserve_wire import V2Error
from control_plane.api.security import principal, signed_runner
from control_plane.api.spec import DocumentedRoute, route
from control_plane.errors import GpufleetError, InvalidRequest, NotFound
from control_plane.services.dispatch import InferenceFailed
from control_plane.services.streams import ChunkEvent, EndEvent, parse_position

log = logging.getLogger(__name__)

EVENT_STREAM = "text/event-stream"
LAST_EVENT_ID = "Last-Event-ID"
_SSE_HEADERS = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}


def sse(data: str, event: str | None = None, event_id: str | None = None) -> bytes:
    """One server-sent event (``data`` is one line of JSON)."""
    head = f"event: {event}\n" if event else ""
    if event_id:
        head += f"id: {event_id}\n"
    return f"{head}data: {data}\n\n".encode()


def _status(exc: GpufleetError) -> int:
    """The HTTP status the error would have had before the stream started."""
    if isinstance(exc, InferenceFailed):
        return failure_status(exc)
    return STATUS_BY_CODE.get(exc.code, 500)


def _error_data(exc: GpufleetError) -> dict[str, Any]:
    error: dict[str, Any] = {"code": exc.code, "message": exc.message}
    if exc.details is not None:
        error["details"] = exc.details
    return {"api_version": "v1", "error": error, "status": _status(exc)}


# --------------------------------------------------------------------------- job stream
async def job_stream(request: Request) -> Response:
    p = principal(request)
    svc = services(request)
    if svc.streams is None:
        raise NotFound("this control plane keeps no streams")
    job_id = request.path_params["job_id"]
    bind(job=job_id)
    header = request.headers.get(LAST_EVENT_ID)
    after = parse_position(header, LAST_EVENT_ID) if header else None
    if after is None:
        after = parse_position(request.query_params.get("after"), "after")
    await svc.streams.start(p, job_id)  # 404 before the stream starts
    streams = svc.streams

    async def events() -> AsyncIterator[bytes]:
        attempt: int | None = after[0] if after else None
        try:
            async with contextlib.aclosing(streams.follow(p, job_id, after)) as follow:
                async for event in follow:
                    if event is None:
                        yield b": keep-alive\n\n"
                    elif isinstance(event, ChunkEvent):
                        c = event.chunk
                        if attempt is not None and c.attempt != attempt:
                            # A retried job streams again from seq 0 (docs/streaming.md).
                            yield sse(json.dumps({"attempt": c.attempt}), "attempt")
                        attempt = c.attempt
                        view = StreamChunkView(
                            job_id=job_id,
                            attempt=c.attempt,
                            seq=c.seq,
                            outputs=[Tensor.model_construct(**o) for o in c.outputs],
                        )
                        yield sse(view.model_dump_json(exclude_none=True), "chunk", event.event_id)
                    elif isinstance(event, EndEvent):
                        yield sse(event.job.model_dump_json(exclude_none=True), "end")
        except GpufleetError as exc:
            log.info("job stream of %s ended by %s: %s", job_id, exc.code, exc.message)
            yield sse(json.dumps(_error_data(exc)), "error")

    return StreamingResponse(events(), media_type=EVENT_STREAM, headers=_SSE_HEADERS)


# --------------------------------------------------------------------------- generate
async def generate_stream(request: Request) -> Response:
    p = principal(request)
    svc = services(request)
    if svc.generate is None:
        raise NotFound("streaming is not available on this control plane")
    name, version = _model_path(request)
    bind(model=name)
    try:
        body = json.loads(await request.body() or b"null")
    except ValueError as exc:
        raise InvalidRequest("the body is not JSON", field="body") from exc
    if not isinstance(body, dict):
        raise InvalidRequest("the body must be a JSON object of inputs", field="body")
    prep = await svc.generate.prepare(p, name, version, body)
    generate = svc.generate

    async def events() -> AsyncIterator[bytes]:
        try:
            async with contextlib.aclosing(generate.run(prep)) as run:
                async for event in run:
                    yield sse(json.dumps(event, separators=(",", ":")))
        except GpufleetError as exc:
            log.info("generate_stream of %s ended by %s: %s", name, exc.code, exc.message)
            failure = {"error": exc.message, "code": exc.code, "status": _status(exc)}
            yield sse(json.dumps(failure))

    return StreamingResponse(events(), media_type=EVENT_STREAM, headers=_SSE_HEADERS)


# --------------------------------------------------------------------------- runner
async def chunks(request: Request) -> Response:
    svc = services(request)
    runner, body = await signed_runner(request, svc.runners, request.path_params["runner_id"])
    req = parse_body(body, ChunksRequest)
    bind(job=req.job_id)
    return send(await append_chunks(svc, runner.id, req))


_GENERATE_SUMMARY = (
    "Triton's generate extension, streamed (server-sent events): the body maps input names "
    'to values plus optional "parameters"; each model response is one `data:` event '
    '{"model_name","model_version","<output>": value}; an error after the start is '
    '`data: {"error","code","status"}`'
)

ROUTES: list[DocumentedRoute] = [
    route(
        "GET",
        "/v1/jobs/{job_id}/stream",
        job_stream,
        "Server-sent events of a job's partial outputs: `chunk` events (id `<attempt>-<seq>`, "
        "data a StreamChunkView) in order, `attempt` when a retry starts over, then `end` "
        "(data: the job as GET answers it) once terminal. Resumable: Last-Event-ID (or "
        "?after=) skips the chunks seen. Chunks are kept after the job ends",
        StreamChunkView,
        query={"after": "a chunk event id (<attempt>-<seq>): start after it"},
        headers={LAST_EVENT_ID: "the last chunk event id received: resume after it"},
        content_type=EVENT_STREAM,
    ),
    *[
        route(
            "POST",
            path,
            kserve_errors(generate_stream),
            _GENERATE_SUMMARY + suffix,
            None,
            content_type=EVENT_STREAM,
            error=V2Error,
        )
        for path, suffix in (
            ("/v2/models/{model}/generate_stream", " (newest READY version)"),
            ("/v2/models/{model}/versions/{version}/generate_stream", " (a pinned version)"),
        )
    ],
    route(
        "POST",
        "/v1/runners/{runner_id}/chunks",
        chunks,
        "Store partial outputs of a running job (decoupled models), fenced by its lease "
        "token (409 when it is not held: stop streaming that job)",
        ChunksResponse,
        request=ChunksRequest,
        security="runner",
    ),
]
