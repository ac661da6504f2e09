# ruff: noqa: F403 - fixtures and helpers come from input_fixtures
"""Issue 12 item 5: slow clients cannot hold the listener. The control plane's own uvicorn
config (``control_plane.http_server.server_config``, what ``serve`` runs) on a loopback
socket, with short limits: unfinished headers are closed, a trickled body gets 408, and past
``http_max_concurrency`` new requests get 503 at once. Every wait is bounded."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import httpx
import pytest
from input_fixtures import *

from control_plane.app import create_app
from control_plane.composition import Services
from control_plane.http_server import server_config
from control_plane.settings import Settings
from tests.helpers.listener import free_port, serving

HEADER_S = 1.0
BODY_S = 1.0
BOUND_S = 6.0  # every wait below ends by then (the limits are 1 s)


def _serve(settings: Settings, services: Services) -> Iterator[tuple[str, int]]:
    port = free_port()
    app = create_app(settings, services)
    with serving(server_config(app, settings, "127.0.0.1", port, log_level="warning")):
        yield "127.0.0.1", port


@pytest.fixture
def limited(settings: Settings, services: Services) -> Iterator[tuple[str, int]]:
    tight = settings.model_copy(
        update={
            "http_header_timeout_s": HEADER_S,
            "http_body_timeout_s": BODY_S,
            "http_body_min_rate": 1024,
            "http_max_concurrency": 64,
        }
    )
    yield from _serve(tight, services)


def _closed_within(sock: socket.socket, seconds: float) -> bool:
    """True when the server closes ``sock`` (EOF or reset) within ``seconds``."""
    sock.settimeout(seconds)
    try:
        while True:
            if not sock.recv(4096):
                return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False


def test_unfinished_headers_are_closed(limited: tuple[str, int]) -> None:
    socks = []
    for _ in range(50):
        s = socket.create_connection(limited, timeout=5)
        s.sendall(b"GET /v1/health HTTP/1.1\r\nHost: x\r\nX-Slow: ")  # never finished
        socks.append(s)
    start = time.monotonic()
    try:
        assert all(_closed_within(s, BOUND_S) for s in socks)
    finally:
        for s in socks:
            s.close()
    assert time.monotonic() - start < BOUND_S
    r = httpx.get(f"http://{limited[0]}:{limited[1]}/v1/health", timeout=5)
    assert r.status_code == 200  # the listener still serves


def test_idle_connection_is_closed(limited: tuple[str, int]) -> None:
    with socket.create_connection(limited, timeout=5) as s:  # connects, sends nothing
        assert _closed_within(s, BOUND_S)


def test_trickled_body_gets_408(limited: tuple[str, int]) -> None:
    with socket.create_connection(limited, timeout=5) as s:
        s.sendall(
            b"POST /v1/auth/token HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 1000\r\n\r\n{"
        )
        start = time.monotonic()
        answer = b""
        s.settimeout(0.25)
        while time.monotonic() - start < BOUND_S:
            try:
                s.sendall(b" ")  # 4 bytes/s
            except (BrokenPipeError, ConnectionResetError):
                break
            try:
                chunk = s.recv(4096)
            except TimeoutError:
                continue
            except ConnectionResetError:
                break
            if not chunk:
                break
            answer += chunk
        held = time.monotonic() - start
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert held < BOUND_S


def test_normal_and_fast_large_bodies_pass(limited: tuple[str, int]) -> None:
    url = f"http://{limited[0]}:{limited[1]}"
    r = httpx.post(f"{url}/v1/auth/token", json={"api_key": "gf_nope"}, timeout=5)
    assert r.status_code in (401, 422)  # read in full and answered
    big = b'{"api_key": "' + b"x" * 2_000_000 + b'"}'
    r = httpx.post(f"{url}/v1/auth/token", content=big, timeout=10)
    assert r.status_code == 422  # too long a key: the body was read, not timed out


def test_concurrency_limit_answers_503(settings: Settings, services: Services) -> None:
    tight = settings.model_copy(update={"http_max_concurrency": 4, "http_header_timeout_s": 5.0})
    for host, port in _serve(tight, services):
        held = [socket.create_connection((host, port), timeout=5) for _ in range(4)]
        try:
            time.sleep(0.2)
            r = httpx.get(f"http://{host}:{port}/v1/health", timeout=5)
            assert r.status_code == 503
        finally:
            for s in held:
                s.close()
        deadline = time.monotonic() + BOUND_S
        while time.monotonic() < deadline:
            if httpx.get(f"http://{host}:{port}/v1/health", timeout=5).status_code == 200:
                break
            time.sleep(0.1)
        else:
            pytest.fail("the listener did not recover after the connections closed")
