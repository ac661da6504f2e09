"""``POST /v1/runners/{id}/complete`` over HTTP: signed like the other runner calls, at most
100 results, each answered on its own (a stale lease token is that result's conflict inside
a 200 answer; the others commit)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.conftest import STORE_KINDS
from tests.control_plane.api.conftest import TokenFor, assert_error
from tests.control_plane.api.helpers import add_sub_job, add_sub_outputs, push_model, signed_post


@pytest.fixture
async def user(client: httpx.AsyncClient, auth_headers: TokenFor) -> dict[str, str]:
    headers = await auth_headers("user", "acme")
    await push_model(client, headers)
    return headers


@pytest.fixture
async def runner(client: httpx.AsyncClient, auth_headers: TokenFor) -> dict[str, str]:
    admin = await auth_headers("admin", "default")
    r = await client.post("/v1/admin/join-tokens", headers=admin, json={})
    assert r.status_code == 201, r.text
    r = await client.post(
        "/v1/runners/register", json={"join_token": r.json()["join_token"], "name": "b1"}
    )
    assert r.status_code == 201, r.text
    return {"id": r.json()["runner_id"], "secret": r.json()["secret"]}


async def complete_batch(
    client: httpx.AsyncClient, runner: dict[str, str], results: list[dict[str, Any]]
) -> httpx.Response:
    path = f"/v1/runners/{runner['id']}/complete"
    return await signed_post(client, runner["id"], runner["secret"], path, {"results": results})


@pytest.mark.parametrize("store_kind", STORE_KINDS)
async def test_each_result_is_fenced_by_its_own_lease_token(
    client: httpx.AsyncClient, user: dict[str, str], runner: dict[str, str]
) -> None:
    r = await client.post("/v1/jobs/batch", headers=user, json={"jobs": [add_sub_job()] * 3})
    assert r.status_code == 202, r.text
    ids = r.json()["ids"]
    path = f"/v1/runners/{runner['id']}/lease"
    body = {"models": [{"name": "add_sub", "version": "1"}], "max_jobs": 3, "wait_s": 2}
    r = await signed_post(client, runner["id"], runner["secret"], path, body)
    assert r.status_code == 200, r.text
    leased = {j["id"]: j for j in r.json()["jobs"]}
    assert set(leased) == set(ids)

    def result(job_id: str, **kw: Any) -> dict[str, Any]:
        token = leased[job_id]["lease_token"]
        done = {"lease_token": token, "status": "SUCCEEDED", "outputs": add_sub_outputs()}
        return {"job_id": job_id, **done, **kw}

    results = [
        result(ids[0]),
        result(ids[1], lease_token="stale-token"),
        result(ids[2], status="FAILED", outputs=None, error={"code": "oom", "message": "x"}),
        {"job_id": "job_nope", "lease_token": "t", "status": "SUCCEEDED"},
    ]
    r = await complete_batch(client, runner, [{k: v for k, v in x.items() if v} for x in results])
    assert r.status_code == 200, r.text
    answer = r.json()
    assert answer["api_version"] == "v1"
    assert [(x["job_id"], x["status"]) for x in answer["results"]] == [
        (ids[0], "committed"),
        (ids[1], "conflict"),
        (ids[2], "committed"),
        ("job_nope", "not_found"),
    ]
    assert answer["results"][1]["error"]["code"] == "conflict"
    assert "error" not in answer["results"][0] or answer["results"][0]["error"] is None

    views = [(await client.get(f"/v1/jobs/{i}", headers=user)).json() for i in ids]
    assert [v["status"] for v in views] == ["SUCCEEDED", "RUNNING", "FAILED"]
    assert views[0]["outputs"][0]["data"] == add_sub_outputs()[0]["data"]
    assert views[2]["error"]["code"] == "oom"
    # A retry of the same batch (the answer was lost): the same answers, committed once.
    r = await complete_batch(client, runner, [{k: v for k, v in x.items() if v} for x in results])
    assert [x["status"] for x in r.json()["results"]] == [
        "committed",
        "conflict",
        "committed",
        "not_found",
    ]


async def test_the_route_is_signed_and_bounded(
    client: httpx.AsyncClient, runner: dict[str, str]
) -> None:
    one = {"job_id": "job_x", "lease_token": "t", "status": "SUCCEEDED"}
    forged = {**runner, "secret": "not-the-secret"}
    assert_error(await complete_batch(client, forged, [one]), 401, "unauthorized")
    err = assert_error(await complete_batch(client, runner, [one] * 101), 422, "invalid_request")
    assert [d["field"] for d in err["details"]] == ["results"]
    err = assert_error(await complete_batch(client, runner, []), 422, "invalid_request")
    assert [d["field"] for d in err["details"]] == ["results"]
    bad = {**one, "status": "RUNNING", "extra": 1}
    err = assert_error(await complete_batch(client, runner, [bad]), 422, "invalid_request")
    assert {d["field"] for d in err["details"]} == {"results.0.status", "results.0.extra"}
    schema = (await client.get("/openapi.json")).json()
    assert "post" in schema["paths"]["/v1/runners/{runner_id}/complete"]
