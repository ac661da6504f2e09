"""Webhook routes through the app: the tenant secret, rotation, the delivery log, and a job
completed by a signed fake runner arriving, signed, at a loopback receiver."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import pytest
from gpufleet.webhooks import verify_webhook

from control_plane.composition import Services
from control_plane.services.webhook_delivery import DeliveryPolicy
from control_plane.services.webhooks import WebhookService
from tests.control_plane.api.conftest import TokenFor, assert_error
from tests.control_plane.api.helpers import add_sub_job, add_sub_outputs, push_model, signed_post
from tests.helpers.webhook_receiver import Receiver


class Wired:
    """The webhook service as the composition root wires it, and a delivery worker on it
    that the tests drive themselves (one pass at a time)."""

    def __init__(self, settings: Any, services: Services) -> None:
        assert services.webhooks is not None
        self.service: WebhookService = services.webhooks
        self.worker = self.service.worker(DeliveryPolicy.from_settings(settings))


@pytest.fixture
def settings(settings: Any) -> Any:
    """Short retry intervals so a failed attempt is retried within the test."""
    return settings.model_copy(
        update={"webhook_initial_backoff_s": 0.01, "webhook_max_backoff_s": 0.05}
    )


@pytest.fixture
async def wired(settings: Any, services: Services) -> Any:
    w = Wired(settings, services)
    yield w
    await w.worker.aclose()


async def test_secret_is_created_once_per_tenant_and_rotates(
    client: httpx.AsyncClient, auth_headers: TokenFor, wired: Wired
) -> None:
    user = await auth_headers("user", "acme")
    r = await client.get("/v1/webhooks/secret", headers=user)
    assert r.status_code == 200, r.text
    first = r.json()
    assert first["api_version"] == "v1" and first["secret"].startswith("whsec_")
    assert (await client.get("/v1/webhooks/secret", headers=user)).json() == first
    other = await client.get("/v1/webhooks/secret", headers=await auth_headers("user", "globex"))
    assert other.json()["secret"] != first["secret"]

    r = await client.post("/v1/webhooks/secret/rotate", headers=user)
    assert r.status_code == 200, r.text
    rotated = r.json()["secret"]
    assert rotated != first["secret"] and rotated.startswith("whsec_")
    assert (await client.get("/v1/webhooks/secret", headers=user)).json()["secret"] == rotated
    assert wired.service.signing_secrets("acme") == [rotated, first["secret"]]


async def test_secret_needs_a_writer(
    client: httpx.AsyncClient, auth_headers: TokenFor, wired: Wired
) -> None:
    viewer = await auth_headers("viewer", "acme")
    assert_error(await client.get("/v1/webhooks/secret", headers=viewer), 403, "forbidden")
    assert_error(await client.post("/v1/webhooks/secret/rotate", headers=viewer), 403, "forbidden")
    assert_error(await client.get("/v1/webhooks/secret"), 401, "unauthorized")


async def test_delivery_log_is_scoped_like_the_job(
    client: httpx.AsyncClient, auth_headers: TokenFor, wired: Wired
) -> None:
    user = await auth_headers("user", "acme")
    await push_model(client, await auth_headers("admin", "acme"))
    job = (await client.post("/v1/jobs", headers=user, json=add_sub_job())).json()["id"]
    r = await client.get(f"/v1/jobs/{job}/webhooks", headers=user)
    assert r.status_code == 200, r.text
    assert r.json() == {"api_version": "v1", "job_id": job, "deliveries": []}
    stranger = await auth_headers("user", "globex")
    assert_error(await client.get(f"/v1/jobs/{job}/webhooks", headers=stranger), 404, "not_found")
    assert_error(await client.get("/v1/jobs/job_nope/webhooks", headers=user), 404, "not_found")


async def test_completed_job_is_delivered_signed(
    client: httpx.AsyncClient, auth_headers: TokenFor, wired: Wired, services: Services
) -> None:
    admin = await auth_headers("admin", "acme")
    await push_model(client, admin)
    join = (await client.post("/v1/admin/join-tokens", headers=admin, json={})).json()
    reg = (
        await client.post(
            "/v1/runners/register", json={"join_token": join["join_token"], "name": "fake"}
        )
    ).json()
    rid, rsecret = reg["runner_id"], reg["secret"]
    with Receiver([503, 200]) as rx:
        body = add_sub_job(webhook={"url": rx.url + "/done", "events": ["running", "completed"]})
        r = await client.post("/v1/jobs", headers=admin, json=body)
        assert r.status_code == 202, r.text
        job_id = r.json()["id"]
        base = f"/v1/runners/{rid}"
        r = await signed_post(
            client,
            rid,
            rsecret,
            f"{base}/lease",
            {"models": [{"name": "add_sub", "version": "1"}], "max_jobs": 1, "wait_s": 2},
        )
        assert r.status_code == 200, r.text
        (leased,) = r.json()["jobs"]
        r = await signed_post(
            client,
            rid,
            rsecret,
            f"{base}/jobs/{job_id}/complete",
            {
                "lease_token": leased["lease_token"],
                "status": "SUCCEEDED",
                "outputs": add_sub_outputs(),
            },
        )
        assert r.status_code == 200, r.text
        deadline = time.monotonic() + 15
        while len(rx.requests) < 3 and time.monotonic() < deadline:
            await wired.worker.run_once()
            await asyncio.sleep(0.02)
        secret = (await client.get("/v1/webhooks/secret", headers=admin)).json()["secret"]
    assert len(rx.requests) == 3, rx.requests
    ids: dict[str, set[str]] = {}
    completed: dict[str, Any] = {}
    for req in rx.requests:
        event = verify_webhook(req.headers, req.body, secret)  # the SDK agrees
        assert event["data"]["id"] == job_id
        ids.setdefault(event["type"], set()).add(req.headers["webhook-id"])
        if event["type"] == "job.completed":
            completed = event
    assert set(ids) == {"job.running", "job.completed"}
    assert all(len(one) == 1 for one in ids.values())  # a retry keeps its webhook-id
    assert completed["data"]["status"] == "SUCCEEDED"
    assert completed["data"]["outputs"][0]["name"] == "OUTPUT0"
    log = (await client.get(f"/v1/jobs/{job_id}/webhooks", headers=admin)).json()
    codes = sorted(a["status_code"] for d in log["deliveries"] for a in d["attempts"])
    assert codes == [200, 200, 503]
    assert all(d["status"] == "delivered" for d in log["deliveries"])


async def test_private_webhook_url_is_refused_at_submit(
    client: httpx.AsyncClient, auth_headers: TokenFor, wired: Wired
) -> None:
    user = await auth_headers("user", "acme")
    await push_model(client, await auth_headers("admin", "acme"))
    for url in ("http://10.0.0.7/hook", "http://169.254.169.254/", "ftp://hooks.example.test/"):
        r = await client.post("/v1/jobs", headers=user, json=add_sub_job(webhook={"url": url}))
        err = assert_error(r, 422, "invalid_request")
        assert any(d.get("field") == "webhook.url" for d in err["details"]), err
