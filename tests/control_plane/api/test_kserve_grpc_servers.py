"""kserve_grpc.servicer_methods / grpcio_handler: the same servicer on gpufleet's HTTP/2
server and on grpcio's: ModelInfer gets the request's bytes and may answer bytes (sent as
they are), every other method gets and answers messages."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from tritonclient.grpc import service_pb2, service_pb2_grpc

from control_plane.api.grpc_h2 import GrpcH2Server
from control_plane.api.kserve_grpc import grpcio_handler, servicer_methods


class Servicer:
    def __init__(self) -> None:
        self.requests: list[Any] = []

    async def ModelInfer(self, request: Any, context: Any) -> Any:
        self.requests.append(request)
        parsed = service_pb2.ModelInferRequest.FromString(request)
        answer = service_pb2.ModelInferResponse(model_name=parsed.model_name, id=parsed.id)
        # a message when the id asks for it, else the bytes (a passed-through answer)
        return answer if parsed.id == "message" else answer.SerializeToString()

    async def ServerLive(self, request: Any, context: Any) -> Any:
        self.requests.append(request)
        return service_pb2.ServerLiveResponse(live=True)

    def __getattr__(self, name: str) -> Any:  # the other RPCs: not called here
        async def other(request: Any, context: Any) -> Any:
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, name)

        return other


@pytest.fixture(params=["gpufleet", "grpcio"])
async def served(request: pytest.FixtureRequest) -> AsyncIterator[tuple[Servicer, str]]:
    servicer = Servicer()
    if request.param == "gpufleet":
        own = GrpcH2Server(servicer_methods(servicer), max_receive=1 << 20)
        port = await own.start("127.0.0.1", 0)
        yield servicer, f"127.0.0.1:{port}"
        await own.stop(0)
    else:
        server = grpc.aio.server()
        server.add_generic_rpc_handlers((grpcio_handler(servicer),))
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        yield servicer, f"127.0.0.1:{port}"
        await server.stop(0)


async def test_model_infer_bytes_both_ways(served: tuple[Servicer, str]) -> None:
    servicer, target = served
    async with grpc.aio.insecure_channel(target) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        for rid in ("bytes", "message"):
            req = service_pb2.ModelInferRequest(model_name="add_sub", id=rid)
            answer = await stub.ModelInfer(req, timeout=5.0)
            assert (answer.model_name, answer.id) == ("add_sub", rid)
            assert servicer.requests[-1] == req.SerializeToString()  # bytes, not parsed
        assert (await stub.ServerLive(service_pb2.ServerLiveRequest(), timeout=5.0)).live
        assert isinstance(servicer.requests[-1], service_pb2.ServerLiveRequest)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.ServerReady(service_pb2.ServerReadyRequest(), timeout=5.0)
        assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED
