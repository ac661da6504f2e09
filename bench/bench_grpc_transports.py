"""CPU per unary gRPC call of the transports on the KServe gRPC path, without Triton.

A server process answers every call with a fixed ~100-byte message (no work of its own), a
client in this process calls it ``--requests`` times at each ``--concurrency``; CPU time
is read from /proc for the server and from this process for the client:

  server  grpcio     grpcio's aio server, generic handler without (de)serializers
  server  gpufleet   control_plane/api/grpc_h2.py (the control plane's gRPC port without TLS)
  client  grpc.aio   a grpc.aio channel's unary call, bytes in and out
  client  gpufleet   runner/triton_grpc.py (the runner's call to Triton's gRPC port)

    .venv/bin/python bench/bench_grpc_transports.py [--requests 3000] [--concurrency 1,8]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "sdk")]

T = TypeVar("T")
METHOD = "/inference.GRPCInferenceService/ModelInfer"
ANSWER = b"\n\x07add_sub\x12\x011" + b"\x00" * 96
REQUEST = b"\n\x07add_sub" + b"x" * 150


async def _serve(kind: str, port: int) -> None:
    import grpc

    async def infer(body: bytes, context: object) -> bytes:
        return ANSWER

    if kind == "gpufleet":
        from control_plane.api.grpc_h2 import GrpcH2Server, Method

        own = GrpcH2Server({METHOD: Method(infer, bytes)}, max_receive=1 << 26)
        await own.start("127.0.0.1", port)
    else:
        server = grpc.aio.server()
        handler = grpc.method_handlers_generic_handler(
            "inference.GRPCInferenceService",
            {"ModelInfer": grpc.unary_unary_rpc_method_handler(infer)},
        )
        server.add_generic_rpc_handlers((handler,))
        server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
    print("ready", flush=True)
    await asyncio.Event().wait()


def _loop_run(main: Awaitable[T]) -> T:
    """Run ``main`` on uvloop when installed (as the control plane and the runner do)."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop comes with both extras on Linux
        return asyncio.run(main)  # type: ignore[arg-type]
    return uvloop.run(main)  # type: ignore[arg-type]


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _client(
    kind: str, port: int
) -> tuple[Callable[[], Awaitable[bytes]], Callable[[], None]]:
    if kind == "gpufleet":
        from runner.triton_grpc import TritonGrpc

        client = TritonGrpc("127.0.0.1", port)

        async def call() -> bytes:
            answer = await client.unary(METHOD, REQUEST, 10.0)
            assert answer.status == 0, answer.message
            return answer.body

        return call, client.close

    import grpc

    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    unary = channel.unary_unary(METHOD)

    async def call_aio() -> bytes:
        return bytes(await unary(REQUEST, timeout=10.0))

    return call_aio, lambda: None


async def _measure(
    client: str, port: int, server_pid: int, requests: int, concurrency: int
) -> tuple[float, float, float]:
    call, close = await _client(client, port)
    for _ in range(200):
        assert await call() == ANSWER
    left = requests

    async def worker() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            await call()

    server_cpu, client_cpu, start = _cpu_s(server_pid), time.process_time(), time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - start
    server_ms = (_cpu_s(server_pid) - server_cpu) * 1000 / requests
    client_ms = (time.process_time() - client_cpu) * 1000 / requests
    close()
    return requests / elapsed, server_ms, client_ms


def _run(server: str, client: str, requests: int, concurrency: int) -> tuple[float, float, float]:
    """One server process, this process the client: calls/s, CPU ms per call of each."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, __file__, "_serve", server, str(port)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        return _loop_run(_measure(client, port, proc.pid, requests, concurrency))
    finally:
        proc.kill()
        proc.wait()


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "_serve":
        _loop_run(_serve(sys.argv[2], int(sys.argv[3])))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--concurrency", default="1,8")
    args = parser.parse_args()
    print("| server | client | concurrency | calls/s | server CPU ms/call | client CPU ms/call |")
    print("|---|---|---|---|---|---|")
    for c in (int(x) for x in args.concurrency.split(",")):
        for server in ("grpcio", "gpufleet"):
            for client in ("grpc.aio", "gpufleet"):
                rate, server_ms, client_ms = _run(server, client, args.requests, c)
                figures = f"{rate:,.0f} | {server_ms:.3f} | {client_ms:.3f}"
                print(f"| {server} | {client} | {c} | {figures} |")


if __name__ == "__main__":
    main()
