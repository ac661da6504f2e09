# ruff: noqa: F403, F405 - fixtures and helpers come from input_fixtures
"""Issue 12 item 8: what runs for one tenant is not shown to another. ``GET /v1/runners``
shows a non-admin only its own tenant's models and running jobs (admins see all);
``/metrics`` needs the metrics token or an admin token unless configured public, or is
served on a separate listener."""

from __future__ import annotations

import dataclasses
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from input_fixtures import *
from pydantic import SecretStr

from control_plane.app import create_app
from control_plane.composition import Services
from control_plane.settings import Settings


async def test_runner_view_is_scoped_to_the_callers_tenant(
    client: httpx.AsyncClient,
    auth_headers: TokenFor,
    model: dict[str, str],
) -> None:
    admin = await auth_headers("admin", "default")
    globex = await auth_headers("user", "globex")
    viewer = await auth_headers("viewer", "globex")
    r = await client.post("/v1/jobs", json=add_sub_job(), headers=model)
    job_id = r.json()["id"]
    runner = await register_runner(client, admin)
    hb = {
        "models": [
            {"name": "add_sub", "version": "1", "state": "READY"},
            {"name": "secret_model", "version": "3", "state": "READY"},
        ],
        "triton": {"models": {"add_sub": {"success": 5}}},
        "running_jobs": [job_id],
    }
    assert (await signed_post(client, runner, "heartbeat", hb)).status_code == 200

    def only(r: httpx.Response) -> dict[str, Any]:
        assert r.status_code == 200, r.text
        (view,) = r.json()["runners"]
        return dict(view)

    seen = only(await client.get("/v1/runners", headers=admin))
    assert {m["name"] for m in seen["models"]} == {"add_sub", "secret_model"}
    assert seen["running_jobs"] == [job_id] and seen["triton"]
    for other in (globex, viewer):
        seen = only(await client.get("/v1/runners", headers=other))
        assert seen["models"] == [] and seen["running_jobs"] == [] and seen["triton"] == {}
        assert seen["id"] == runner["id"] and seen["status"] == "ONLINE"
    seen = only(await client.get("/v1/runners", headers=model))  # acme owns add_sub
    assert [m["name"] for m in seen["models"]] == ["add_sub"]
    assert seen["running_jobs"] == [job_id]


async def test_metrics_need_a_token(
    client: httpx.AsyncClient,
    auth_headers: TokenFor,
    model: dict[str, str],
) -> None:
    assert_error(await client.get("/metrics"), 401, "unauthorized")
    assert_error(await client.get("/metrics", headers=model), 403, "forbidden")
    r = await client.get("/metrics", headers=await auth_headers("admin", "default"))
    assert r.status_code == 200 and "gpufleet_queue_depth" in r.text


async def _metrics_of(
    services: Services, settings: Settings, headers: dict[str, str]
) -> httpx.Response:
    app = create_app(settings, dataclasses.replace(services, settings=settings))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://cp.test") as c:
        return await c.get("/metrics", headers=headers)


async def test_metrics_token_and_public_settings(
    settings: Settings,
    services: Services,
) -> None:
    token = SecretStr("scrape-token-0123456789")
    with_token = settings.model_copy(update={"metrics_token": token})
    ok = await _metrics_of(
        services, with_token, {"Authorization": "Bearer scrape-token-0123456789"}
    )
    assert ok.status_code == 200 and "gpufleet_queue_depth" in ok.text
    bad = await _metrics_of(services, with_token, {"Authorization": "Bearer scrape-token-wrong"})
    assert bad.status_code == 401
    public = settings.model_copy(update={"metrics_public": True})
    assert (await _metrics_of(services, public, {})).status_code == 200


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def metrics_listener(settings: Settings, services: Services) -> Iterator[str]:
    """The separate metrics listener on a loopback socket (a thread running uvicorn)."""
    import asyncio

    from control_plane.http_server import metrics_server

    app = create_app(settings, services)
    listen = f"127.0.0.1:{_free_port()}"
    server = metrics_server(app.state.metrics, listen, settings)
    thread = threading.Thread(target=lambda: asyncio.run(server.serve()), daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.started
    yield f"http://{listen}"
    server.should_exit = True
    thread.join(10)


def test_metrics_on_a_separate_listener(metrics_listener: str) -> None:
    r = httpx.get(f"{metrics_listener}/metrics", timeout=5)
    assert r.status_code == 200 and "gpufleet_queue_depth" in r.text
    assert httpx.get(f"{metrics_listener}/v1/jobs", timeout=5).status_code == 404  # nothing else
