"""The KServe short path on the real listener (``server_config`` with ``KServeFastPath``,
uvicorn on a loopback socket, raw sockets as clients), the runner side replaced by a stub of
``passthrough_body``: HTTP/1.1 framing (keep-alive, pipelining, HTTP/1.0, ``Connection:
close``), the slow-body guard on a body that never starts, a runner answer that cannot be
sent (500, never a hung client), and the h11 protocol (no short path: the ordinary route).

The integration tests (tests/integration/test_dispatch_channel.py, test_tls.py) run it with a
real control plane and channel."""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

import control_plane.api.kserve_fast as kf
from control_plane.http_server import server_config
from control_plane.settings import Settings
from tests.helpers.listener import free_port, serving

BODY_S = 1.0
ANSWER: dict[str, Any] = {"answer": None}


class _Principal:
    scopes = frozenset({"jobs:write"})


class _Auth:
    def cached_principal(self, token: str) -> Any:
        return _Principal() if token == "good" else None


async def _passthrough(*_: Any) -> Any:
    answer = ANSWER["answer"]
    return answer or SimpleNamespace(body=b'{"outputs":[]}', meta={}, runner_id="r1")


async def _ordinary(request: Request) -> Response:
    return Response(b"ordinary:%d" % len(await request.body()), media_type="text/plain")


def _serve(http: str | None = None, **kw: Any) -> Iterator[int]:
    """The listener on a free port; ``kw``: ``hsts`` for the short path, the rest for
    ``uvicorn.Config``."""
    settings = Settings(http_header_timeout_s=2.0, http_body_timeout_s=BODY_S)
    app = Starlette(routes=[Route("/v2/models/{m}/infer", _ordinary, methods=["POST"])])
    app.state.services = SimpleNamespace(auth=_Auth(), inference=object())
    app.state.metrics = None
    short = kf.KServeFastPath(
        app,
        max_body_bytes=settings.max_body_bytes,
        body_idle_s=settings.http_body_timeout_s,
        body_min_rate=settings.http_body_min_rate,
        storage_budget_s=settings.storage_budget_s,
        hsts=kw.pop("hsts", None),
    )
    port = free_port()
    kw.setdefault("log_level", "warning")
    config = server_config(app, settings, "127.0.0.1", port, short, **kw)
    if http is not None:
        from uvicorn.protocols.http.h11_impl import H11Protocol

        from control_plane.http_server import header_timeout

        config.http = header_timeout(H11Protocol, 2.0, short)
    with serving(config):
        yield port


@pytest.fixture(scope="module")
def port(monkey_module: pytest.MonkeyPatch) -> Iterator[int]:
    yield from _serve()


@pytest.fixture(scope="module")
def h11_port(monkey_module: pytest.MonkeyPatch) -> Iterator[int]:
    yield from _serve("h11")


@pytest.fixture(scope="module")
def monkey_module() -> Iterator[pytest.MonkeyPatch]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(kf, "passthrough_body", _passthrough)
        yield mp


def _request(body: bytes = b"{}", token: bytes = b"good", extra: bytes = b"") -> bytes:
    return (
        b"POST /v2/models/m/infer HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + token
        + b"\r\nContent-Type: application/json\r\nContent-Length: %d\r\n" % len(body)
        + extra + b"\r\n" + body
    )  # fmt: skip


def _exchange(
    port: int, data: bytes, wait_s: float = 3.0, until: int | None = None
) -> tuple[bytes, bool]:
    """Send ``data``; read until ``until`` responses came (None: until EOF), EOF, or
    ``wait_s``: (bytes, whether the server closed the connection)."""
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(data)
        out = b""
        end = time.monotonic() + wait_s
        while time.monotonic() < end:
            s.settimeout(max(0.01, end - time.monotonic()))
            try:
                chunk = s.recv(65536)
            except TimeoutError:
                break
            except ConnectionResetError:
                return out, True
            if not chunk:
                return out, True
            out += chunk
            if until is not None and out.count(b"HTTP/1.1 ") >= until and out.endswith(b"}"):
                break
        return out, False


def test_keep_alive_and_pipelined_requests(port: int) -> None:
    out, closed = _exchange(port, _request() * 3, until=3)
    assert out.count(b"HTTP/1.1 200 OK\r\n") == 3, out
    assert out.count(b'{"outputs":[]}') == 3 and not closed
    assert b"x-request-id: req_" in out and b"server: uvicorn" in out


def test_a_bad_token_takes_the_ordinary_route_on_the_same_connection(port: int) -> None:
    out, _ = _exchange(port, _request(token=b"other") + _request(), until=2)
    assert b"ordinary:2" in out and b'{"outputs":[]}' in out, out


def test_connection_close_and_http_1_0_close_after_the_answer(port: int) -> None:
    out, closed = _exchange(port, _request(extra=b"Connection: close\r\n"), wait_s=3)
    assert out.startswith(b"HTTP/1.1 200 ") and closed, out
    old = _request().replace(b"HTTP/1.1\r\n", b"HTTP/1.0\r\n", 1)
    out, closed = _exchange(port, old, wait_s=3)
    assert b"connection: close" in out.lower() and closed, out


def test_a_body_that_never_starts_gets_408_and_a_close(port: int) -> None:
    head = _request(b"").replace(b"Content-Length: 0", b"Content-Length: 10")
    started = time.monotonic()
    out, closed = _exchange(port, head, wait_s=BODY_S + 4)
    assert closed and b" 408 " in out, (time.monotonic() - started, out)


@pytest.mark.parametrize(
    "answer",
    [
        SimpleNamespace(body=b"{}", meta={"content_type": 123}, runner_id="r"),
        SimpleNamespace(body="a str body", meta={}, runner_id="r"),
        SimpleNamespace(body=b"{}", meta={"content_type": "a\r\nx-evil: 1"}, runner_id="r"),
        SimpleNamespace(body=b"{}", meta={"header_length": "2\r\nx-evil: 1"}, runner_id="r"),
    ],
)
def test_a_runner_answer_that_cannot_be_sent_is_a_500(port: int, answer: Any) -> None:
    ANSWER["answer"] = answer
    try:
        out, _ = _exchange(port, _request(), until=1)
    finally:
        ANSWER["answer"] = None
    assert out.startswith(b"HTTP/1.1 500 ") and b"x-evil" not in out, out


def test_h11_has_no_short_path_every_request_takes_the_ordinary_route(h11_port: int) -> None:
    out, _ = _exchange(h11_port, _request(), wait_s=1)
    assert out.startswith(b"HTTP/1.1 200 ") and out.endswith(b"ordinary:2"), out


@pytest.mark.parametrize("proxy_headers", [True, False])
def test_a_trusted_proxys_forwarded_headers_apply_as_on_the_ordinary_stack(
    monkey_module: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, proxy_headers: bool
) -> None:
    """uvicorn's proxy-headers rewrite (on by default, the peer 127.0.0.1 trusted): the
    access line names the forwarded client and ``X-Forwarded-Proto: https`` gets HSTS, as
    the ordinary stack would; with ``proxy_headers`` off both are ignored."""
    access = logging.getLogger("uvicorn.access")  # (another listener's logging config may
    access.addHandler(caplog.handler)  # have stopped its propagation: listen on it directly)
    caplog.set_level(logging.INFO, logger="uvicorn.access")
    forwarded = b"X-Forwarded-For: 203.0.113.7\r\nX-Forwarded-Proto: https\r\n"
    served = _serve(
        hsts=b"max-age=60", log_config=None, log_level="info", proxy_headers=proxy_headers
    )
    port = next(served)
    try:
        out, _ = _exchange(port, _request(extra=forwarded), until=1)
        plain, _ = _exchange(port, _request(), until=1)
    finally:
        served.close()
        access.removeHandler(caplog.handler)
    assert out.startswith(b"HTTP/1.1 200 ") and plain.startswith(b"HTTP/1.1 200 "), out
    records = {id(r): r for r in caplog.records if r.name == "uvicorn.access"}  # each once
    lines = [r.getMessage() for r in records.values()]
    assert len(lines) == 2 and all("POST /v2/models/m/infer" in line for line in lines), lines
    assert lines[1].startswith("127.0.0.1:")
    assert b"strict-transport-security" not in plain.lower()
    if proxy_headers:
        assert lines[0].startswith("203.0.113.7"), lines
        assert b"strict-transport-security: max-age=60" in out.lower(), out
    else:
        assert lines[0].startswith("127.0.0.1:"), lines
        assert b"strict-transport-security" not in out.lower(), out
