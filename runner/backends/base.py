"""What the daemon needs from a Triton backend.

A ``TritonBackend`` owns the server's lifecycle (start or adopt, liveness, restart, stop);
its ``engine`` talks to the server (load/unload/ready/infer/metrics). The docker and
process backends share :class:`runner.triton_client.TritonClient` as engine; the mock
backend answers from the model configs.

Errors::

    BackendError       the server cannot be started (image missing, binary absent, ...)
    InferError         one inference failed; ``transient`` when the server was unreachable
                       (the job may be retried once Triton is back) rather than refusing it
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any, Protocol

from gpufleet.wire import OutputRequest, Tensor


class BackendError(Exception):
    """The Triton server cannot be started or reached."""


class InferError(Exception):
    """An inference failed with Triton's message. ``code`` names a refusal of the request
    itself ("invalid_input": Triton's 400 / INVALID_ARGUMENT) when known."""

    def __init__(self, message: str, *, transient: bool = False, code: str | None = None) -> None:
        super().__init__(message)
        self.transient = transient
        self.code = code


class RawInferenceEngine(Protocol):
    """An engine that also passes KServe requests through untouched (the dispatch channel's
    binary frames): ``protocol`` "http" (``body`` is the HTTP body, ``meta`` its
    ``header_length``/``content_type``) or "grpc" (a serialized ``ModelInferRequest``).
    Returns Triton's answer bytes and, for HTTP, their ``header_length``/``content_type``;
    raises InferError like ``infer``."""

    raw_protocols: frozenset[str]

    async def infer_raw(
        self,
        protocol: str,
        model: str,
        version: str,
        body: bytes,
        meta: dict[str, Any],
        timeout_s: float,
    ) -> tuple[bytes, dict[str, Any]]: ...


class StreamingEngine(Protocol):
    """An engine that also streams (``runner/triton_stream.py``): the outputs of each response
    of one request, for decoupled models that answer many times. ``decoupled`` tells whether
    a loaded version is one (False when unknown). Cancelling the iteration cancels the
    request in Triton. Raises InferError like ``infer``."""

    async def decoupled(self, model: str, version: str) -> bool: ...

    def infer_stream(
        self,
        model: str,
        version: str,
        inputs: list[Tensor],
        outputs: list[OutputRequest] | None,
        parameters: dict[str, Any],
        timeout_s: float,
    ) -> AsyncGenerator[list[Tensor], None]: ...


class InferenceEngine(Protocol):
    """Talks to one Triton server."""

    async def server_ready(self) -> bool:
        """Triton answers ready (False when unreachable)."""
        ...

    async def load_model(self, name: str, config: str | None = None) -> None:
        """Load (or reload) a model through the repository API; raises InferError.

        ``config``: a JSON model config that replaces the model's config.pbtxt for this load
        (model sync pins versions and GPUs with it)."""
        ...

    async def unload_model(self, name: str) -> None: ...

    async def model_ready(self, name: str, version: str) -> bool: ...

    async def infer(
        self,
        model: str,
        version: str,
        inputs: list[Tensor],
        outputs: list[OutputRequest] | None,
        parameters: dict[str, Any],
        timeout_s: float,
    ) -> list[Tensor]:
        """Run one inference; raises InferError (or TensorError for bad inputs)."""
        ...

    async def metrics(self) -> dict[str, Any]:
        """Triton's own metrics, parsed (``{}`` when unavailable)."""
        ...

    async def aclose(self) -> None: ...


class TritonBackend(Protocol):
    """Lifecycle of the Triton server behind ``engine``."""

    kind: str

    @property
    def engine(self) -> InferenceEngine:
        """The client of this backend's server."""
        ...

    async def start(self) -> None:
        """Make Triton run and be ready (adopting a running one when possible)."""
        ...

    async def alive(self) -> bool:
        """The server process/container is running."""
        ...

    async def restart(self) -> None:
        """Replace a dead or sick server (logs kept) and wait until ready."""
        ...

    async def stop(self) -> None:
        """Clean stop: the server is stopped and removed; logs kept."""
        ...

    def describe(self) -> dict[str, Any]:
        """A JSON-able summary for the status server and heartbeat."""
        ...
