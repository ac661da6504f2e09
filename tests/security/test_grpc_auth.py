"""The KServe gRPC listener applies the same auth rules as HTTP: a revoked key's bearer
stops within ``revocation_check_s``, and wrong API keys are throttled per key id and per
client address (RESOURCE_EXHAUSTED, gRPC's 429)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from tritonclient.grpc import service_pb2, service_pb2_grpc

from control_plane.api.kserve_grpc import KServeGrpcServer
from control_plane.composition import Services, build_services
from control_plane.storage.stores import Stores
from tests.helpers.clock import FakeClock


@pytest.fixture
def settings(settings: Any) -> Any:
    return settings.model_copy(
        update={"revocation_check_s": 0.5, "auth_failures_per_key": 3, "api_key_cache_s": 60}
    )


@pytest.fixture
def monotonic() -> FakeClock:
    """The auth service's monotonic clock (its revocation-state cache ages when moved)."""
    return FakeClock()


@pytest.fixture
def grpc_fleet(
    settings: Any, stores: Stores, monotonic: FakeClock
) -> Iterator[tuple[str, Services]]:
    services = build_services(settings, stores, monotonic=monotonic)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    server = KServeGrpcServer(services, "127.0.0.1", 0)
    port = asyncio.run_coroutine_threadsafe(server.start(), loop).result(timeout=20)
    yield f"127.0.0.1:{port}", services
    asyncio.run_coroutine_threadsafe(server.stop(grace_s=1.0), loop).result(timeout=20)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(timeout=10)
    loop.close()


def _live(address: str, bearer: str) -> grpc.StatusCode:
    with grpc.insecure_channel(address) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        try:
            stub.ServerLive(
                service_pb2.ServerLiveRequest(),
                metadata=[("authorization", f"Bearer {bearer}")],
                timeout=10,
            )
        except grpc.RpcError as exc:
            return exc.code()  # type: ignore[no-any-return]
    return grpc.StatusCode.OK


def test_revoked_key_stops_over_grpc(
    grpc_fleet: tuple[str, Services], monotonic: FakeClock
) -> None:
    address, services = grpc_fleet
    made = services.auth.issue_api_key("acme", "user", "triton")
    assert _live(address, made.api_key) == grpc.StatusCode.OK  # remembered from now on
    # Revoked directly in the store (as another replica would): this listener's memory
    # keeps the key for api_key_cache_s, the state check stops it within seconds.
    assert services.stores is not None and services.stores.auth.revoke_api_key(made.id)
    monotonic.advance(0.6)
    assert _live(address, made.api_key) == grpc.StatusCode.UNAUTHENTICATED


def test_wrong_keys_are_throttled_over_grpc(grpc_fleet: tuple[str, Services]) -> None:
    address, services = grpc_fleet
    key = services.auth.issue_api_key("acme", "user", "triton").api_key
    wrong = key[:-1] + ("0" if key[-1] != "0" else "1")
    codes = [_live(address, wrong) for _ in range(4)]
    assert codes == [grpc.StatusCode.UNAUTHENTICATED] * 3 + [grpc.StatusCode.RESOURCE_EXHAUSTED]
    assert _live(address, key) == grpc.StatusCode.RESOURCE_EXHAUSTED  # key id locked a while
