"""The floor under every fleet path on this machine: what a process hop costs by itself.

A synchronous call through the fleet crosses two more processes than a call to Triton
directly (client → control plane → runner → Triton and back: four more socket hand-offs per
request). This bench measures those hand-offs with no work in them, on loopback with uvloop:

  direct      the client to an echo server (stands in for Triton; answers at once)
  1 relay     the client to a relay process that passes the bytes on to the echo server
  2 relays    the client → relay → relay → echo server (the control plane and the runner,
              with nothing but the forwarding)

Each request is 300 bytes and its answer the same 300 bytes, one request at a time per
connection (``--concurrency`` connections). The table shows p50/p99 latency, req/s, the p50
over direct and the CPU per request of the relay processes: the cost of the hops alone, which
no code in the control plane or the runner can go under. On a VM whose idle vCPUs halt, waking
a process that waits for data costs far more than on bare metal; compare with the p50 over
direct of ``bench_runner.py``.

    .venv/bin/python bench/bench_hops.py [--requests 2000] [--concurrency 1,8,32]
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import multiprocessing
import os
import socket
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

SIZE = 300
console = Console(width=150)


def _loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop

        return uvloop.new_event_loop()
    except ImportError:  # pragma: no cover - uvloop is a dependency of the control plane
        return asyncio.new_event_loop()


class _Echo(asyncio.Protocol):
    """Answers each request with its bytes after ``work_s`` of CPU (a model's compute)."""

    def __init__(self, work_s: float = 0.0) -> None:
        self.work_s = work_s

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if self.work_s:
            end = time.perf_counter() + self.work_s
            while time.perf_counter() < end:
                pass
        self.transport.write(data)


class _Relay(asyncio.Protocol):
    """Bytes from the client go to ``port``; bytes from there come back (one connection
    downstream per connection upstream, as a keep-alive pool would give)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.down: asyncio.Transport | None = None
        self.pending: list[bytes] = []
        self.connecting: asyncio.Task[None] | None = None

    def connection_made(self, transport: Any) -> None:
        self.up = transport
        self.connecting = asyncio.ensure_future(self._connect())

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        relay = self

        class Back(asyncio.Protocol):
            def data_received(self, data: bytes) -> None:
                relay.up.write(data)

        self.down, _ = await loop.create_connection(Back, "127.0.0.1", self.port)
        for data in self.pending:
            self.down.write(data)
        self.pending.clear()

    def data_received(self, data: bytes) -> None:
        if self.down is None:
            self.pending.append(data)
        else:
            self.down.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.down is not None:
            self.down.close()


def _serve(factory: Callable[[], asyncio.Protocol], sock: socket.socket) -> None:
    loop = _loop()
    asyncio.set_event_loop(loop)
    loop.run_until_complete(loop.create_server(factory, sock=sock))
    loop.run_forever()


def _listener() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(256)
    return sock


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _client(port: int, n: int, concurrency: int) -> tuple[list[float], float]:
    payload = b"x" * SIZE
    latencies: list[float] = []
    per_conn = max(1, n // concurrency)

    async def one() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.transport.set_write_buffer_limits(0)
        for i in range(per_conn + 20):
            t0 = time.perf_counter()
            writer.write(payload)
            await reader.readexactly(SIZE)
            if i >= 20:  # warm-up
                latencies.append(time.perf_counter() - t0)
        writer.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(concurrency)))
    return latencies, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--concurrency", default="1,8,32")
    ap.add_argument(
        "--work-ms",
        default="0,0.5",
        help="comma-separated CPU time the echo server spends per request (Triton's compute)",
    )
    args = ap.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]
    ctx = multiprocessing.get_context("fork")  # the relays' factories are closures
    Row = tuple[float, str, int, list[float], float, list[float]]
    rows: list[Row] = []
    loop = _loop()

    def measure(work_ms: float, c: int) -> None:
        procs: list[Any] = []

        def start(factory: Callable[[], asyncio.Protocol]) -> tuple[int, int]:
            sock = _listener()
            port = int(sock.getsockname()[1])
            proc = ctx.Process(target=_serve, args=(factory, sock), daemon=True)
            proc.start()
            sock.close()
            procs.append(proc)
            return port, int(proc.pid or 0)

        echo_port, _ = start(functools.partial(_Echo, work_ms / 1000))
        relay2_port, relay2_pid = start(functools.partial(_Relay, echo_port))
        relay1_port, relay1_pid = start(functools.partial(_Relay, relay2_port))
        time.sleep(0.3)
        try:
            for name, port, pids in (
                ("direct", echo_port, []),
                ("1 relay", relay2_port, [relay2_pid]),
                ("2 relays", relay1_port, [relay1_pid, relay2_pid]),
            ):
                before = [_cpu_s(p) for p in pids]
                lat, wall = loop.run_until_complete(_client(port, args.requests, c))
                cpu = [(_cpu_s(p) - b) * 1000 / len(lat) for p, b in zip(pids, before, strict=True)]
                rows.append((work_ms, name, c, lat, len(lat) / wall, cpu))
        finally:
            for proc in procs:  # by pid: this bench's own children
                proc.terminate()
                proc.join(5)

    try:
        for work_ms in (float(w) for w in args.work_ms.split(",")):
            for c in levels:
                measure(work_ms, c)
    finally:
        loop.close()

    table = Table(title=f"process hops alone: {SIZE}-byte request and answer, loopback, uvloop")
    for col in ("echo work ms", "path", "concurrency", "p50 ms", "p99 ms", "req/s",
                "p50 over direct ms", "req/s vs direct", "CPU ms/req per relay"):  # fmt: skip
        table.add_column(col, justify="left" if col == "path" else "right")
    for work_ms, name, c, lat, rate, cpu in rows:
        lat.sort()
        p50 = statistics.median(lat) * 1000
        p99 = lat[int(len(lat) * 0.99) - 1] * 1000
        base = next(r for r in rows if r[:3] == (work_ms, "direct", c))
        base_p50 = statistics.median(base[3]) * 1000
        table.add_row(
            f"{work_ms:g}",
            name,
            str(c),
            f"{p50:.3f}",
            f"{p99:.3f}",
            f"{rate:.0f}",
            "" if name == "direct" else f"{p50 - base_p50:+.3f}",
            "" if name == "direct" else f"{rate / base[4]:.0%}",
            " / ".join(f"{x:.3f}" for x in cpu),
        )
    console.print(table)


if __name__ == "__main__":
    main()
