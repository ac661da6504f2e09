"""api/gate.py: the API's middleware as one ASGI layer answers as the separate middleware
did (request id, request metric, body limit, storage budget, bearer auth, the app's error
handlers, the 500 of an unhandled error); and the helpers that read a request without
Starlette's objects (http.header, http.query_value, http.JsonBody, the auth path check) read
it as those objects do."""

from __future__ import annotations

from typing import Any

import pytest
from starlette.datastructures import URL, QueryParams
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from control_plane.api.http import JsonBody, header, query_value
from control_plane.api.security import _URL_SAFE_PATH
from control_plane.app import create_app
from control_plane.storage import budget


def http_scope(method: str, path: str, headers: list[tuple[bytes, bytes]] | None = None) -> Any:
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"cp.test"), *(headers or [])],
        "client": ("127.0.0.1", 5000),
        "server": ("cp.test", 80),
    }


async def call(app: Any, scope: Any, body: bytes = b"") -> list[dict[str, Any]]:
    """Run one request through ``app``; the messages it sent."""
    sent: list[dict[str, Any]] = []
    messages = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive() -> dict[str, Any]:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    return sent


def request_ids(start: dict[str, Any]) -> list[bytes]:
    return [v for k, v in start["headers"] if k == b"x-request-id"]


def observed(app: Any) -> set[tuple[str, str, str]]:
    """(route, method, status) of every request-latency sample."""
    metrics = app.state.metrics
    metrics.flush_later()
    return {
        (s.labels["route"], s.labels["method"], s.labels["status"])
        for metric in metrics.request_latency.collect()
        for s in metric.samples
        if s.name.endswith("_count")
    }


@pytest.fixture
def api(settings: Any, services: Any) -> Any:
    app = create_app(settings, services)
    seen: dict[str, Any] = {}

    async def boom(request: Request) -> Response:
        raise RuntimeError("boom")

    async def sets_own_id(request: Request) -> Response:
        seen["budget"] = budget.current()
        return PlainTextResponse("ok", headers={"X-Request-ID": "mine"})

    app.router.routes += [Route("/test/boom", boom), Route("/test/own-id", sets_own_id)]
    app.state.seen = seen
    return app


async def test_one_request_id_per_response_and_the_budget_during_the_request(api: Any) -> None:
    sent = await call(api, http_scope("GET", "/test/own-id", [(b"x-request-id", b"trace-1")]))
    assert sent[0]["status"] == 200
    assert request_ids(sent[0]) == [b"trace-1"]  # the route's own is replaced, not added to
    spent = api.state.seen["budget"]
    assert spent is not None and spent.limit == api.state.services.settings.storage_budget_s
    assert budget.current() is None  # reset after the request
    sent = await call(api, http_scope("GET", "/test/own-id", [(b"x-request-id", b"bad id")]))
    assert request_ids(sent[0])[0].startswith(b"req_")
    assert ("/test/own-id", "GET", "200") in observed(api)


async def test_a_declared_body_over_the_limit_or_a_bad_length_is_refused_first(api: Any) -> None:
    limit = api.state.services.settings.max_body_bytes
    too_big = [(b"content-length", str(limit + 1).encode()), (b"x-request-id", b"r-413")]
    sent = await call(api, http_scope("POST", "/v1/jobs", too_big))
    assert sent[0]["status"] == 413 and request_ids(sent[0]) == [b"r-413"]
    assert b'"payload_too_large"' in sent[1]["body"]
    sent = await call(api, http_scope("POST", "/v1/jobs", [(b"content-length", b"x")]))
    assert sent[0]["status"] == 422 and b'"invalid_request"' in sent[1]["body"]
    sent = await call(api, http_scope("POST", "/v2/models/m/infer", too_big))
    assert sent[0]["status"] == 413 and b'"code":"payload_too_large"' in sent[1]["body"]
    # the metric names the template the refused request would have matched
    assert {("/v1/jobs", "POST", "413"), ("/v1/jobs", "POST", "422")} <= observed(api)


async def test_a_body_longer_than_it_declared_is_cut_at_the_limit(api: Any) -> None:
    limit = api.state.services.settings.max_body_bytes
    sent = await call(api, http_scope("POST", "/v1/auth/token"), b"x" * (limit + 1))
    assert sent[0]["status"] == 413


async def test_router_errors_and_route_errors_use_the_apps_handlers(api: Any) -> None:
    sent = await call(api, http_scope("GET", "/nowhere"))
    assert sent[0]["status"] == 404 and b'"not_found"' in sent[1]["body"]
    assert request_ids(sent[0])
    sent = await call(api, http_scope("DELETE", "/v1/jobs"))
    assert sent[0]["status"] == 405
    assert dict(sent[0]["headers"])[b"allow"] == b"GET, HEAD, POST"
    sent = await call(api, http_scope("GET", "/v1/jobs/j1"))  # no token
    assert sent[0]["status"] == 401 and b'"unauthorized"' in sent[1]["body"]
    assert {("unmatched", "GET", "404"), ("/v1/jobs/{job_id}", "GET", "401")} <= observed(api)


async def test_an_unhandled_error_is_a_500_without_the_request_id_and_raised(api: Any) -> None:
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    with pytest.raises(RuntimeError, match="boom"):
        await api(http_scope("GET", "/test/boom"), receive, send)
    assert sent[0]["status"] == 500 and not request_ids(sent[0])
    assert b'"internal"' in sent[1]["body"]
    assert ("/test/boom", "GET", "500") in observed(api)


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"wait_s=5",
        b"a=1&wait_s=2&wait_s=3",
        b"wait_s",
        b"wait_s=&x",
        b"&&wait_s=1&",
        b"wait_s=a%20b",
        b"wait_s=1+2",
        b"x=%ZZ&wait_s=4",
        b"wait_s=\xe9",
        b"wait_s==1",
    ],
)
def test_query_value_reads_as_query_params(raw: bytes) -> None:
    scope = {**http_scope("GET", "/"), "query_string": raw}
    assert query_value(Request(scope), "wait_s") == QueryParams(raw).get("wait_s")


def test_header_reads_as_headers_get() -> None:
    scope = http_scope(
        "GET", "/", [(b"prefer", b"wait=1"), (b"prefer", b"wait=2"), (b"x", b"\xe9")]
    )
    request = Request(scope)
    for name in (b"prefer", b"x", b"missing"):
        assert header(request, name) == Request(scope).headers.get(name.decode())


@pytest.mark.parametrize("status", [200, 202, 204, 304, 101])
def test_json_body_is_the_response_starlette_builds(status: int) -> None:
    ours = JsonBody('{"id":"j1","é":1}', status)
    theirs = Response('{"id":"j1","é":1}', status_code=status, media_type="application/json")
    assert (ours.body, ours.raw_headers, ours.status_code) == (
        theirs.body,
        theirs.raw_headers,
        theirs.status_code,
    )


@pytest.mark.parametrize(
    "path",
    [
        "/v1/jobs/j1",
        "/v1/admin/x",
        "/a?b",
        "/a#b",
        "/a\\b",
        "//v1/admin",
        "/a\tb",
        "/a\nb",
        "/a b",
        "/ä/x",
        "/v1/runners/r/rotate-secret",
    ],
)
def test_the_auth_check_reads_the_path_as_url_path(path: str) -> None:
    """Where the quick check says the scope's path is what ``HTTPConnection.url.path``
    reads, it is (elsewhere ``from_memory`` asks ``URL`` itself)."""
    scope = http_scope("GET", path)
    if _URL_SAFE_PATH.match(path) is not None:
        assert URL(scope=scope).path == path
