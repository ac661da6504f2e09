"""gpufleet: Python SDK and CLI for the gpufleet inference platform.

>>> import numpy as np
>>> from gpufleet import Client
>>> fleet = Client("http://127.0.0.1:8080", api_key="gf_...")  # doctest: +SKIP
>>> fleet.infer("add_sub", {"INPUT0": np.ones(4, np.float32), "INPUT1": np.ones(4, np.float32)})
... # doctest: +SKIP
"""

from __future__ import annotations

from gpufleet._version import __version__
from gpufleet.aio import AsyncClient
from gpufleet.client import Client
from gpufleet.errors import (
    APIError,
    AuthError,
    ConflictError,
    ConnectionError,
    ForbiddenError,
    GatewayTimeoutError,
    GpufleetError,
    InvalidRequestError,
    JobFailedError,
    ModelNotFoundError,
    NotFoundError,
    PayloadTooLargeError,
    RateLimitedError,
    ServerError,
    UnavailableError,
    ValidationError,
    WaitTimeoutError,
    WebhookVerificationError,
)
from gpufleet.streaming import StreamChunk
from gpufleet.tensors import to_ndarray, to_tensor
from gpufleet.tls import TlsOptions, TlsSettingError
from gpufleet.webhooks import verify_webhook
from gpufleet.wire import JobView as Job
from gpufleet.wire import Tensor

__all__ = [
    "APIError",
    "AsyncClient",
    "AuthError",
    "Client",
    "ConflictError",
    "ConnectionError",
    "ForbiddenError",
    "GatewayTimeoutError",
    "GpufleetError",
    "InvalidRequestError",
    "Job",
    "JobFailedError",
    "ModelNotFoundError",
    "NotFoundError",
    "PayloadTooLargeError",
    "RateLimitedError",
    "ServerError",
    "StreamChunk",
    "Tensor",
    "TlsOptions",
    "TlsSettingError",
    "UnavailableError",
    "ValidationError",
    "WaitTimeoutError",
    "WebhookVerificationError",
    "__version__",
    "to_ndarray",
    "to_tensor",
    "verify_webhook",
]
