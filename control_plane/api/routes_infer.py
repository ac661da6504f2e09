"""``POST /v1/models/{model}/infer``: synchronous inference in gpufleet's own (v1) form.

The body holds the same tensors as a job; the answer comes back on the same request. It runs
in memory on a runner connected to this replica when there is one (``path: "dispatch"``),
else as a durable job that the call waits for (``path: "job"``); see services/inference.py.
"""

from __future__ import annotations

import math

from gpufleet._logs import bind
from gpufleet.wire import InferRequest, InferResponse, JobRequest, Tensor
from starlette.requests import Request
from starlette.responses import Response

from control_plane.api.context import services
from control_plane.api.http import read_model, send
from control_plane.api.security import principal
from control_plane.api.spec import DocumentedRoute, route
from control_plane.errors import InvalidRequest


async def infer(request: Request) -> Response:
    p = principal(request)
    svc = services(request)
    assert svc.inference is not None
    body = await read_model(request, InferRequest)
    model = request.path_params["model"]
    bind(model=model)  # log lines about this request name the model (then the job)
    try:
        job = JobRequest(
            model=model,
            model_version=body.model_version,
            inputs=body.inputs,
            outputs=body.outputs,
            parameters=body.parameters,
            ttl_s=max(1, math.ceil(body.timeout_s or svc.settings.infer_wait_s)),
            region=body.region,
            regions_allowed=body.regions_allowed,
        )
    except ValueError as exc:
        raise InvalidRequest(f"model name {model!r} is not valid", field="model") from exc
    submitted = request.app.state.metrics.jobs_submitted
    res = await svc.inference.infer(
        p,
        job,
        timeout_s=body.timeout_s,
        on_submit=lambda m: submitted.labels(m).inc(),
    )
    outputs = [t if isinstance(t, Tensor) else Tensor.model_validate(t) for t in res.outputs]
    return send(
        InferResponse(
            model=res.model,
            model_version=res.version,
            outputs=outputs,
            outputs_url=res.outputs_url,
            path="dispatch" if res.path == "dispatch" else "job",
            job_id=res.job_id,
            runner_id=res.runner_id,
            timings=res.timings,
        )
    )


ROUTES: list[DocumentedRoute] = [
    route(
        "POST",
        "/v1/models/{model}/infer",
        infer,
        "Synchronous inference: in memory on a connected runner, else as a durable job "
        "(waits up to timeout_s / infer_wait_s; 503 when the runner is lost: retry)",
        InferResponse,
        request=InferRequest,
    ),
]
