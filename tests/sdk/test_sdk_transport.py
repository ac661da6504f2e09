"""The sans-IO core: retries, backoff, Retry-After, token exchange and refresh.

A scripted fake server answers each request; a tiny driver records sleeps instead of
sleeping, so the tests check the exact schedule without waiting.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from typing import Any

import httpx
import numpy as np
import pytest
from gpufleet import AsyncClient, Client, errors
from gpufleet._transport import Authenticate, Core, Op, Send, Sleep

Handler = Callable[[httpx.Request], httpx.Response]
TOKEN_PAIR = {"api_version": "v1", "token_type": "Bearer", "expires_in": 900}


class FakeServer:
    """Answers from a script of responses/exceptions per path; records every request."""

    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []
        self.scripts: dict[str, list[Any]] = {}
        self.issued = 0

    def script(self, path: str, *answers: Any) -> None:
        self.scripts.setdefault(path, []).extend(answers)

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        path = request.url.path
        if path in ("/v1/auth/token", "/v1/auth/refresh") and not self.scripts.get(path):
            self.issued += 1
            body = {
                **TOKEN_PAIR,
                "access_token": f"at{self.issued}",
                "refresh_token": f"refresh-{self.issued}",
            }
            return httpx.Response(200, json=body)
        if path.startswith("/v1/models/") and not self.scripts.get(path):
            # the SDK's look at the model's declared datatypes (before a submit of plain
            # lists): unknown here, so nothing is cast
            return httpx.Response(404, json=err("not_found"))
        answer = self.scripts[path].pop(0)
        if isinstance(answer, Exception):
            raise answer
        status, body, headers = answer if len(answer) == 3 else (*answer, None)
        return httpx.Response(status, json=body, headers=headers)

    def paths(self) -> list[str]:
        return [r.url.path for r in self.requests]


def err(code: str) -> dict[str, Any]:
    return {"api_version": "v1", "error": {"code": code, "message": code}}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def drive(core: Core, server: FakeServer, op: Op[Any], sleeps: list[float]) -> Any:
    """Run an op against the fake server, recording sleeps."""
    value: Any = None
    error: Exception | None = None
    while True:
        try:
            effect = op.throw(error) if error else op.send(value)
        except StopIteration as stop:
            return stop.value
        value, error = None, None
        if isinstance(effect, Send):
            try:
                value = server(effect.request)
            except httpx.TransportError as exc:
                error = exc
        elif isinstance(effect, Sleep):
            sleeps.append(effect.seconds)
        elif isinstance(effect, Authenticate):
            value = drive(core, server, core.authenticate(effect.stale), sleeps)


@pytest.fixture
def clock() -> Clock:
    return Clock()


def make_core(clock: Clock, **kw: Any) -> Core:
    args: dict[str, Any] = {
        "api_key": "gf_testkey",
        "token": None,
        "timeout": 5.0,
        "max_retries": 3,
    }
    args.update(kw)
    return Core("http://cp.test", rng=random.Random(1), clock=clock, **args)


def test_503_is_retried_with_full_jitter_then_succeeds(clock: Clock) -> None:
    server = FakeServer()
    server.script(
        "/v1/jobs/j", (503, err("unavailable")), (503, err("unavailable")), (200, {"ok": 1})
    )
    core, sleeps = make_core(clock), list[float]()
    resp = drive(core, server, core.request("GET", "/v1/jobs/j"), sleeps)
    assert resp.json() == {"ok": 1}
    assert len(sleeps) == 2
    assert 0 <= sleeps[0] <= 0.25 and 0 <= sleeps[1] <= 0.5  # uniform(0, base * 2**n)
    assert server.paths() == ["/v1/auth/token", "/v1/jobs/j", "/v1/jobs/j", "/v1/jobs/j"]
    assert {r.headers["Authorization"] for r in server.requests[1:]} == {"Bearer at1"}


def test_retry_after_is_honoured(clock: Clock) -> None:
    server = FakeServer()
    server.script("/v1/x", (429, err("rate_limited"), {"Retry-After": "3"}), (200, {}))
    core, sleeps = make_core(clock), list[float]()
    drive(core, server, core.request("POST", "/v1/x", idempotent=False), sleeps)
    assert sleeps == [3.0]


def test_retries_are_bounded(clock: Clock) -> None:
    server = FakeServer()
    server.script("/v1/x", *[(503, err("unavailable"))] * 4)
    core, sleeps = make_core(clock, max_retries=3), list[float]()
    with pytest.raises(errors.UnavailableError) as info:
        drive(core, server, core.request("GET", "/v1/x"), sleeps)
    assert info.value.status_code == 503 and len(sleeps) == 3


def test_non_idempotent_post_is_not_retried_on_503_or_read_errors(clock: Clock) -> None:
    server = FakeServer()
    server.script("/v1/x", (503, err("unavailable")))
    core, sleeps = make_core(clock), list[float]()
    with pytest.raises(errors.UnavailableError):
        drive(core, server, core.request("POST", "/v1/x"), sleeps)
    server.script("/v1/x", httpx.ReadError("reset"))
    with pytest.raises(errors.ConnectionError):
        drive(core, server, core.request("POST", "/v1/x"), sleeps)
    # but a refused connection certainly did not reach the server
    server.script("/v1/x", httpx.ConnectError("refused"), (200, {}))
    drive(core, server, core.request("POST", "/v1/x"), sleeps)
    assert sleeps and server.paths()[-2:] == ["/v1/x", "/v1/x"]


def test_connection_errors_are_retried_then_surface(clock: Clock) -> None:
    server = FakeServer()
    server.script("/v1/x", *[httpx.ConnectError("refused")] * 4)
    core, sleeps = make_core(clock), list[float]()
    with pytest.raises(errors.ConnectionError) as info:
        drive(core, server, core.request("GET", "/v1/x"), sleeps)
    assert isinstance(info.value.__cause__, httpx.ConnectError)
    assert len(sleeps) == 3


def test_errors_are_not_retried(clock: Clock) -> None:
    server = FakeServer()
    server.script("/v1/x", (404, err("not_found")))
    core, sleeps = make_core(clock), list[float]()
    with pytest.raises(errors.NotFoundError):
        drive(core, server, core.request("GET", "/v1/x"), sleeps)
    assert sleeps == []


def test_token_reused_then_refreshed_shortly_before_expiry(clock: Clock) -> None:
    server = FakeServer()
    server.script("/v1/x", *[(200, {})] * 3)
    core, sleeps = make_core(clock), list[float]()
    drive(core, server, core.request("GET", "/v1/x"), sleeps)
    clock.now += 800  # 100 s left of 900: still fresh (margin is 60 s)
    drive(core, server, core.request("GET", "/v1/x"), sleeps)
    clock.now += 50  # 50 s left: refresh first
    drive(core, server, core.request("GET", "/v1/x"), sleeps)
    assert server.paths() == ["/v1/auth/token", "/v1/x", "/v1/x", "/v1/auth/refresh", "/v1/x"]
    refresh = json.loads(server.requests[3].content)
    assert refresh["refresh_token"] == "refresh-1"
    assert server.requests[4].headers["Authorization"] == "Bearer at2"


def test_a_401_renews_once_and_retries(clock: Clock) -> None:
    server = FakeServer()
    server.script("/v1/x", (401, err("unauthorized")), (200, {"ok": True}))
    core, sleeps = make_core(clock), list[float]()
    assert drive(core, server, core.request("GET", "/v1/x"), sleeps).json() == {"ok": True}
    assert server.paths() == ["/v1/auth/token", "/v1/x", "/v1/auth/refresh", "/v1/x"]
    server.script("/v1/x", (401, err("unauthorized")), (401, err("unauthorized")))
    with pytest.raises(errors.AuthError):
        drive(core, server, core.request("GET", "/v1/x"), sleeps)


def test_refused_refresh_falls_back_to_the_api_key(clock: Clock) -> None:
    server = FakeServer()
    server.script("/v1/x", (200, {}), (200, {}))
    core, sleeps = make_core(clock), list[float]()
    drive(core, server, core.request("GET", "/v1/x"), sleeps)
    clock.now += 10_000
    server.script("/v1/auth/refresh", (401, err("unauthorized")))
    drive(core, server, core.request("GET", "/v1/x"), sleeps)
    assert server.paths()[-3:] == ["/v1/auth/refresh", "/v1/auth/token", "/v1/x"]


def test_a_bare_token_is_used_as_is_and_a_401_is_final(clock: Clock) -> None:
    server = FakeServer()
    server.script("/v1/x", (200, {}), (401, err("unauthorized")))
    core, sleeps = make_core(clock, api_key=None, token="tok"), list[float]()
    drive(core, server, core.request("GET", "/v1/x"), sleeps)
    with pytest.raises(errors.AuthError):
        drive(core, server, core.request("GET", "/v1/x"), sleeps)
    assert server.paths() == ["/v1/x", "/v1/x"]
    assert server.requests[0].headers["Authorization"] == "Bearer tok"


def test_credentials_and_url_are_checked() -> None:
    with pytest.raises(ValueError):
        Core("http://x", api_key=None, token=None, timeout=1, max_retries=0)
    with pytest.raises(ValueError):
        Core("ftp://x", api_key="k", token=None, timeout=1, max_retries=0)


def _jobs_app(server: FakeServer) -> None:
    accepted = {"api_version": "v1", "id": "job_1", "status": "QUEUED", "created_at": "t"}
    server.script("/v1/jobs", (503, err("unavailable")), (202, accepted))
    # lists are cast to the model's declared datatypes: an unknown model is left as sent
    server.script("/v1/models/m", (404, err("not_found")))


def test_sync_client_submit_retries_with_one_idempotency_key(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    server = FakeServer()
    _jobs_app(server)
    with Client("http://cp.test", api_key="gf_testkey", transport=httpx.MockTransport(server)) as c:
        c._core.retry.base_s = 0.001
        job = c.submit(
            "add_sub", {"INPUT0": np.ones((1, 4), np.float32)}, priority=3, tags={"a": "b"}
        )
    assert (job.id, job.status, job.model, job.priority, job.tags) == (
        "job_1",
        "QUEUED",
        "add_sub",
        3,
        {"a": "b"},
    )
    submits = [r for r in server.requests if r.url.path == "/v1/jobs"]
    assert len(submits) == 2
    keys = {r.headers["Idempotency-Key"] for r in submits}
    assert len(keys) == 1 and len(keys.pop()) == 36
    assert submits[0].content == submits[1].content
    body = json.loads(submits[0].content)
    assert body["inputs"][0] == {
        "name": "INPUT0",
        "datatype": "FP32",
        "shape": [1, 4],
        "data": [1.0] * 4,
    }


async def test_async_client_submit_uses_the_given_key() -> None:
    server = FakeServer()
    _jobs_app(server)
    transport = httpx.MockTransport(server)
    async with AsyncClient("http://cp.test", api_key="gf_testkey", transport=transport) as c:
        c._core.retry.base_s = 0.001
        job = await c.submit("m", {"X": [1, 2]}, idempotency_key="k-1")
    assert job.id == "job_1"
    assert {
        r.headers.get("Idempotency-Key") for r in server.requests if r.url.path == "/v1/jobs"
    } == {"k-1"}


def test_large_inputs_are_uploaded_and_referenced(clock: Clock) -> None:
    from gpufleet import _ops
    from gpufleet.tensors import from_raw_bytes

    server = FakeServer()
    upload = {"api_version": "v1", "ref": "payloads/p1", "url": "http://bucket.test/p1?sig=x"}
    server.script("/v1/payloads", (201, upload))
    server.script("/p1", (200, {}))
    server.script("/v1/models/m", (404, err("not_found")))  # declared datatypes: none known
    core, sleeps = make_core(clock), list[float]()
    big = np.arange(2048, dtype=np.float32).reshape(2, 1024)
    req = drive(
        core,
        server,
        _ops.job_request(core, "m", {"BIG": big, "SMALL": [1, 2]}, inline_limit=1024),
        sleeps,
    )
    big_t, small_t = req.inputs
    assert (big_t.data_ref, big_t.data, big_t.shape, big_t.datatype) == (
        "payloads/p1",
        None,
        [2, 1024],
        "FP32",
    )
    assert small_t.data == [1, 2]
    asked = json.loads(server.requests[2].content)  # after the token and the model's GET
    assert asked["size"] == big.nbytes
    put = server.requests[3]
    assert put.method == "PUT" and "Authorization" not in put.headers
    np.testing.assert_array_equal(from_raw_bytes(put.content, "FP32", [2, 1024]), big)


def test_inline_budget_is_shared_by_all_inputs(clock: Clock) -> None:
    """Two tensors that fit the limit alone but not together: the second is uploaded."""
    from gpufleet import _ops

    server = FakeServer()
    upload = {"api_version": "v1", "ref": "pl_2", "url": "http://bucket.test/p2?sig=x"}
    server.script("/v1/payloads", (201, upload))
    server.script("/p2", (200, {}))
    core, sleeps = make_core(clock), list[float]()
    a = np.zeros(100, dtype=np.uint8)  # ~250 bytes of JSON each
    req = drive(
        core, server, _ops.job_request(core, "m", {"A": a, "B": a}, inline_limit=400), sleeps
    )
    first, second = req.inputs
    assert first.data is not None and first.data_ref is None
    assert second.data is None and second.data_ref == "pl_2"


def test_a_failed_submit_says_its_key_and_that_the_job_may_exist() -> None:
    """Every try timed out (the store stalled past the SDK's timeout): the job may have been
    stored. The error carries the key the SDK generated, so a resubmit finds that job."""
    server = FakeServer()
    server.script("/v1/jobs", *[httpx.ReadTimeout("stalled") for _ in range(4)])
    with Client("http://cp.test", api_key="gf_testkey", transport=httpx.MockTransport(server)) as c:
        c._core.retry.base_s = 0.001
        with pytest.raises(errors.ConnectionError) as exc:
            c.submit("m", {"X": [1, 2]})
    keys = {r.headers["Idempotency-Key"] for r in server.requests if r.url.path == "/v1/jobs"}
    assert exc.value.may_exist is True and {exc.value.idempotency_key} == keys
    assert f"idempotency_key={exc.value.idempotency_key!r}" in str(exc.value)


def test_a_refused_submit_does_not_exist() -> None:
    server = FakeServer()
    server.script("/v1/jobs", (422, err("invalid_request")))
    transport = httpx.MockTransport(server)
    with (
        Client("http://cp.test", api_key="gf_testkey", transport=transport) as c,
        pytest.raises(errors.ValidationError) as exc,
    ):
        c.submit("m", {"X": [1, 2]}, idempotency_key="mine")
    assert exc.value.may_exist is False and exc.value.idempotency_key == "mine"
    assert "may have been stored" not in str(exc.value)


async def test_batch_submit_carries_one_key_across_retries_and_its_errors() -> None:
    server = FakeServer()
    accepted = {"api_version": "v1", "ids": ["job_1", "job_2"]}
    server.script("/v1/jobs/batch", httpx.ReadTimeout("lost"), (503, err("unavailable")))
    server.script("/v1/jobs/batch", (202, accepted))
    transport = httpx.MockTransport(server)
    jobs = [{"model": "m", "inputs": {"X": [1, 2]}}] * 2
    async with AsyncClient("http://cp.test", api_key="gf_testkey", transport=transport) as c:
        c._core.retry.base_s = 0.001
        assert await c.submit_batch(jobs) == ["job_1", "job_2"]
        sent = [r for r in server.requests if r.url.path == "/v1/jobs/batch"]
        assert len(sent) == 3 and len({r.headers["Idempotency-Key"] for r in sent}) == 1
        c._core.retry.max_retries = 0
        server.script("/v1/jobs/batch", (503, err("unavailable")))
        with pytest.raises(errors.UnavailableError) as exc:
            await c.submit_batch(jobs, idempotency_key="b-1")
    assert exc.value.may_exist and exc.value.idempotency_key == "b-1"
    assert server.requests[-1].headers["Idempotency-Key"] == "b-1"
