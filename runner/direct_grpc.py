"""Direct mode over gRPC: Triton's ``GRPCInferenceService`` on the runner's own port, for
``tritonclient.grpc`` callers with a ticket (metadata ``authorization: Bearer <ticket>``).

Same checks as the HTTP endpoint (``runner/direct.py``, one ``TicketVerifier``): the model
and version come from the request message; a request without a version is pinned to the
ticket's (a field appended to the serialized message: protobuf keeps the last value, so the
tensors are not copied). The request bytes then go to the loopback Triton's gRPC port as
they are and its answer (or its status) comes back as it is.

    ServerLive | ServerReady                           no ticket
    ModelInfer | ModelMetadata | ModelReady | ModelConfig   ticket for that model (version)
    everything else                                    UNIMPLEMENTED
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

import grpc
from tritonclient.grpc import service_pb2

from runner.direct import TicketRefused, TicketVerifier

log = logging.getLogger(__name__)

SERVICE = "inference.GRPCInferenceService"
OPEN = ("ServerLive", "ServerReady")
# method -> (request message, name of its model field, name of its version field)
TICKETED: dict[str, tuple[Any, str, str]] = {
    "ModelInfer": (service_pb2.ModelInferRequest, "model_name", "model_version"),
    "ModelMetadata": (service_pb2.ModelMetadataRequest, "name", "version"),
    "ModelReady": (service_pb2.ModelReadyRequest, "name", "version"),
    "ModelConfig": (service_pb2.ModelConfigRequest, "name", "version"),
}
MAX_MESSAGE = 2**31 - 1


class DirectGrpcServer:
    """KServe v2 gRPC in front of the loopback Triton's gRPC port."""

    def __init__(
        self,
        verifier: TicketVerifier,
        triton_target: str,
        *,
        host: str,
        port: int,
        credentials: grpc.ServerCredentials | None = None,
    ) -> None:
        self._verifier = verifier
        self._target = triton_target
        self._host = host
        self._port = port
        self._credentials = credentials
        self._server: grpc.aio.Server | None = None
        self._channel: grpc.aio.Channel | None = None
        self.port = port
        self.counters = verifier.counters

    async def start(self) -> None:
        options = [
            ("grpc.max_send_message_length", MAX_MESSAGE),
            ("grpc.max_receive_message_length", MAX_MESSAGE),
        ]
        self._channel = grpc.aio.insecure_channel(self._target, options=options)
        handlers: dict[str, grpc.RpcMethodHandler] = {}
        for name in (*OPEN, *TICKETED):
            fn: Callable[[bytes, grpc.aio.ServicerContext], Awaitable[bytes]] = partial(
                self._call, name
            )
            handlers[name] = grpc.unary_unary_rpc_method_handler(fn)
        server = grpc.aio.server(options=options)
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
        address = f"{self._host}:{self._port}"
        if self._credentials is not None:
            self.port = server.add_secure_port(address, self._credentials)
        else:
            self.port = server.add_insecure_port(address)
        await server.start()
        self._server = server
        log.info("direct mode: KServe gRPC on %s:%d", self._host, self.port)

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.stop(grace=2.0)
            self._server = None
        if self._channel is not None:
            await self._channel.close()
            self._channel = None

    async def _call(self, name: str, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        if name in TICKETED:
            request = await self._admit(name, request, context)
        if self._channel is None:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "direct endpoint stopping")
        assert self._channel is not None
        call = self._channel.unary_unary(f"/{SERVICE}/{name}")
        try:
            answer = await call(request, timeout=context.time_remaining())
        except grpc.aio.AioRpcError as exc:
            await context.abort(exc.code(), exc.details() or "")
        if name == "ModelInfer":
            self.counters.served += 1
        return bytes(answer)

    async def _admit(self, name: str, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        """The request (pinned to the ticket's version) if its ticket allows it."""
        message, model_field, version_field = TICKETED[name]
        try:
            parsed = message.FromString(request)
        except Exception:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "malformed request message")
        metadata = {k.lower(): v for k, v in (context.invocation_metadata() or ())}
        auth = str(metadata.get("authorization", ""))
        if not auth.lower().startswith("bearer "):
            self._refused("a ticket is required")
            await context.abort(
                grpc.StatusCode.UNAUTHENTICATED,
                "a ticket is required (metadata authorization: Bearer <ticket>)",
            )
        model = getattr(parsed, model_field)
        version = getattr(parsed, version_field) or None
        try:
            claims = await self._verifier.verify(auth[7:].strip(), model, version)
        except TicketRefused as exc:
            self._refused(str(exc))
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, str(exc))
        if version is None:
            pin = message(**{version_field: str(claims["version"])}).SerializeToString()
            request = request + pin
        return request

    def _refused(self, reason: str) -> None:
        self.counters.refused += 1
        key = reason.split(" (")[0]
        self.counters.refusals[key] = self.counters.refusals.get(key, 0) + 1


def server_credentials(cert: Any, key: Any) -> grpc.ServerCredentials | None:
    """TLS for the gRPC endpoint from the direct endpoint's certificate (None: plaintext)."""
    if cert is None:
        return None
    with open(cert, "rb") as c, open(key, "rb") as k:
        return grpc.ssl_server_credentials([(k.read(), c.read())])
