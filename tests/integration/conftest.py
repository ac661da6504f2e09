"""Fixtures for control planes over real sockets: uvicorn in a thread, or
``python -m control_plane serve`` subprocesses (stopped by pid with SIGTERM)."""

from __future__ import annotations

import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import uvicorn

from control_plane.app import create_app
from control_plane.composition import Services, build_services
from control_plane.storage.stores import Stores
from tests.conftest import free_port

REPO = Path(__file__).resolve().parents[2]
READY_PREFIX = "gpufleet control plane listening on "


@pytest.fixture
def live_services(settings: Any, stores: Stores) -> Services:
    """The services of ``live_server`` (issue keys directly in its store)."""
    return build_services(settings, stores)


@pytest.fixture
def live_server(settings: Any, live_services: Services, stores: Stores) -> Iterator[str]:
    """The app under uvicorn in a thread on 127.0.0.1; its base URL (which the embedded
    store's blob URLs name)."""
    port = free_port()
    app = create_app(settings, live_services)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    stores.set_public_url(f"http://127.0.0.1:{port}")
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


@dataclass
class Replica:
    """One ``python -m control_plane serve`` process."""

    proc: subprocess.Popen[str]
    url: str
    lines: queue.Queue[str]

    def stop(self, timeout: float = 15) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()  # SIGTERM to this pid only
            try:
                return self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
                raise
        return int(self.proc.returncode)


def replica_env(settings: Any) -> dict[str, str]:
    """Environment pointing a subprocess at the test's tables (no jwt secret: shared key)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GPUFLEET_")}
    env.update(
        {
            "GPUFLEET_DYNAMODB_ENDPOINT_URL": settings.dynamodb_endpoint_url,
            "GPUFLEET_S3_ENDPOINT_URL": settings.s3_endpoint_url,
            "GPUFLEET_TABLE_PREFIX": settings.table_prefix,
            "GPUFLEET_BUCKET": settings.bucket,
            "GPUFLEET_POLL_INTERVAL_S": "0.05",
            "GPUFLEET_SWEEP_INTERVAL_S": "0.5",
            "GPUFLEET_ALLOW_MOCK_RUNNERS": "true",  # the tests' runners are mock ones
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
        }
    )
    return env


def start_replica(env: dict[str, str], *args: str, timeout: float = 60) -> Replica:
    """Start a control-plane process on a free port; wait for its ready line."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "control_plane", "serve", "--port", "0", *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line.rstrip("\n"))

    threading.Thread(target=pump, daemon=True).start()
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=0.5)
        except queue.Empty:
            if proc.poll() is not None:
                break
            continue
        seen.append(line)
        if line.startswith(READY_PREFIX):
            return Replica(proc, line[len(READY_PREFIX) :].strip(), lines)
    proc.kill()
    proc.wait(timeout=5)
    raise AssertionError("control plane did not start:\n" + "\n".join(seen))


@pytest.fixture
def replicas(settings: Any, aws: Any) -> Iterator[Callable[..., Replica]]:
    """``replicas(*args)`` starts a control-plane process on the test's tables (DynamoDB +
    S3 on moto: ``store_kind`` "dynamodb"; several replicas cannot share the embedded store)."""
    started: list[Replica] = []

    def start(*args: str) -> Replica:
        r = start_replica(replica_env(settings), *args)
        started.append(r)
        return r

    yield start
    for r in started:
        r.stop()
