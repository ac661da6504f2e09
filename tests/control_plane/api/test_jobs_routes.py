"""Job and model routes over HTTP on the real services: tenancy, idempotency, listing."""

from __future__ import annotations

import httpx
import pytest

from tests.conftest import STORE_KINDS
from tests.control_plane.api.conftest import TokenFor, assert_error
from tests.control_plane.api.helpers import add_sub_job, push_model


@pytest.mark.parametrize("store_kind", STORE_KINDS)
async def test_submit_get_list_cancel_and_tenancy(
    client: httpx.AsyncClient, auth_headers: TokenFor
) -> None:
    acme = await auth_headers("user", "acme")
    await push_model(client, acme)
    r = await client.post("/v1/jobs", json=add_sub_job(), headers=acme)
    assert r.status_code == 202, r.text
    accepted = r.json()
    assert accepted["status"] == "QUEUED" and accepted["id"].startswith("job_")
    job_path = f"/v1/jobs/{accepted['id']}"
    assert (await client.get(job_path, headers=acme)).json()["model"] == "add_sub"
    listed = (await client.get("/v1/jobs?status=QUEUED&limit=10", headers=acme)).json()
    assert [j["id"] for j in listed["jobs"]] == [accepted["id"]]
    lower = (await client.get("/v1/jobs?status=queued", headers=acme)).json()  # any case
    assert [j["id"] for j in lower["jobs"]] == [accepted["id"]]
    err = assert_error(
        await client.get("/v1/jobs?status=nope", headers=acme), 422, "invalid_request"
    )
    assert "QUEUED, RUNNING" in str(err)

    other = await auth_headers("admin", "beta")
    other_user = await auth_headers("user", "beta")
    assert_error(await client.get(job_path, headers=other_user), 404, "not_found")
    assert_error(await client.post(f"{job_path}/cancel", headers=other_user), 404, "not_found")
    assert (await client.get("/v1/jobs", headers=other_user)).json()["jobs"] == []
    assert (await client.get(job_path, headers=other)).status_code == 200  # admins see all tenants
    assert_error(await client.get("/v1/models/add_sub", headers=other_user), 404, "not_found")

    viewer = await auth_headers("viewer", "acme")
    assert_error(await client.post(f"{job_path}/cancel", headers=viewer), 403, "forbidden")
    r = await client.post(f"{job_path}/cancel", headers=acme)
    assert r.status_code == 200 and r.json()["status"] == "CANCELLED"
    assert_error(await client.post(f"{job_path}/cancel", headers=acme), 409, "conflict")


async def test_idempotent_submit(client: httpx.AsyncClient, auth_headers: TokenFor) -> None:
    h = await auth_headers("user")
    await push_model(client, h)
    key = {**h, "Idempotency-Key": "order-42"}
    first = await client.post("/v1/jobs", json=add_sub_job(), headers=key)
    again = await client.post("/v1/jobs", json=add_sub_job(), headers=key)
    assert (first.status_code, again.status_code) == (202, 200)
    assert first.json()["id"] == again.json()["id"]
    assert_error(
        await client.post("/v1/jobs", json=add_sub_job(priority=9), headers=key), 409, "conflict"
    )


async def test_batch_and_unknown_model(client: httpx.AsyncClient, auth_headers: TokenFor) -> None:
    h = await auth_headers("user")
    assert_error(
        await client.post("/v1/jobs", json=add_sub_job(), headers=h), 404, "model_not_found"
    )
    await push_model(client, h)
    r = await client.post(
        "/v1/jobs/batch", json={"jobs": [add_sub_job(), add_sub_job()]}, headers=h
    )
    assert r.status_code == 202, r.text
    assert len(r.json()["ids"]) == 2
    assert_error(
        await client.post("/v1/jobs/batch", json={"jobs": []}, headers=h), 422, "invalid_request"
    )


async def test_model_routes(client: httpx.AsyncClient, auth_headers: TokenFor) -> None:
    h = await auth_headers("user")
    committed = await push_model(client, h)
    assert committed["state"] == "READY" and committed["name"] == "add_sub"
    names = [m["name"] for m in (await client.get("/v1/models", headers=h)).json()["models"]]
    assert names == ["add_sub"]
    r = await client.delete(f"/v1/models/add_sub/versions/{committed['version']}", headers=h)
    assert r.status_code == 200, r.text


async def test_submit_with_prefer_wait_answers_the_job_once_terminal(
    client: httpx.AsyncClient, auth_headers: TokenFor
) -> None:
    import asyncio
    import time

    h = await auth_headers("user")
    await push_model(client, h)
    # Nothing runs it: after the wait, the job as GET answers it, still QUEUED (202).
    r = await client.post("/v1/jobs", json=add_sub_job(), headers={**h, "Prefer": "wait=0.2"})
    assert r.status_code == 202, r.text
    assert (r.json()["status"], r.json()["model"]) == ("QUEUED", "add_sub")
    assert r.headers["Preference-Applied"] == "wait=0.2"

    # Terminal meanwhile (cancelled by another caller): answered at once, 200.
    async def cancel_the_queued_job() -> None:
        for _ in range(100):
            listed = (await client.get("/v1/jobs?status=QUEUED", headers=h)).json()["jobs"]
            fresh = [j for j in listed if j["id"] != r.json()["id"]]
            if fresh:
                await client.post(f"/v1/jobs/{fresh[0]['id']}/cancel", headers=h)
                return
            await asyncio.sleep(0.05)

    t = time.monotonic()
    waited, _ = await asyncio.gather(
        client.post("/v1/jobs", json=add_sub_job(), headers={**h, "Prefer": "wait=20"}),
        cancel_the_queued_job(),
    )
    assert waited.status_code == 200, waited.text
    assert waited.json()["status"] == "CANCELLED"
    assert time.monotonic() - t < 10

    for bad in ("wait=soon", "wait=-1"):
        err = assert_error(
            await client.post("/v1/jobs", json=add_sub_job(), headers={**h, "Prefer": bad}),
            422,
            "invalid_request",
        )
        assert "Prefer" in err["message"]
