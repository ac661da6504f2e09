"""``GET /v1/jobs/{id}/logs``: the logs a runner sends with a result (its lines about the job,
what the model printed) are kept with the job on both stores, for its tenant only; the job's
view gets ``cold_start``/``load_ms``/``runner_ms`` from the result's timings."""

from __future__ import annotations

import httpx
import pytest

from tests.conftest import STORE_KINDS
from tests.control_plane.api.conftest import TokenFor, assert_error
from tests.control_plane.api.helpers import add_sub_job, add_sub_outputs, signed_post
from tests.control_plane.api.test_runner_batch_routes import complete_batch, runner, user  # noqa: F401

LOGS = (
    "runner | 12:00:00.001 INFO job started: model add_sub version 1\n"
    "model  | 12:00:00.002 add_sub: adding 4 values\n"
)


@pytest.mark.parametrize("store_kind", STORE_KINDS)
async def test_logs_sent_with_the_result_are_kept_with_the_job(
    client: httpx.AsyncClient,
    user: dict[str, str],  # noqa: F811
    runner: dict[str, str],  # noqa: F811
    auth_headers: TokenFor,
) -> None:
    job = (await client.post("/v1/jobs", headers=user, json=add_sub_job())).json()
    before = await client.get(f"/v1/jobs/{job['id']}/logs", headers=user)
    assert before.status_code == 200 and before.json()["logs"] == ""
    assert before.json()["status"] == "QUEUED"

    path = f"/v1/runners/{runner['id']}/lease"
    body = {"models": [{"name": "add_sub", "version": "1"}], "max_jobs": 1}
    r = await signed_post(client, runner["id"], runner["secret"], path, body)
    [leased] = r.json()["jobs"]
    result = {
        "job_id": leased["id"],
        "lease_token": leased["lease_token"],
        "status": "SUCCEEDED",
        "outputs": add_sub_outputs(),
        "timings": {"triton_ms": 2.4, "total_ms": 3.0, "load_ms": 1400.0, "loaded_at": 1.0},
        "logs": LOGS,
    }
    r = await complete_batch(client, runner, [result])
    assert r.status_code == 200 and r.json()["results"][0]["status"] == "committed", r.text

    got = await client.get(f"/v1/jobs/{job['id']}/logs", headers=user)
    assert got.status_code == 200, got.text
    assert got.json()["logs"] == LOGS and got.json()["truncated"] is False
    assert got.json()["status"] == "SUCCEEDED"
    view = (await client.get(f"/v1/jobs/{job['id']}", headers=user)).json()
    assert view["run_ms"] == 2 and view["runner_ms"] is not None
    assert view["cold_start"] is False and view["load_ms"] is None  # loaded before the submit
    assert "logs_ref" not in view

    other = await auth_headers("user", "globex")
    assert_error(await client.get(f"/v1/jobs/{job['id']}/logs", headers=other), 404, "not_found")


@pytest.mark.parametrize("store_kind", STORE_KINDS)
async def test_long_logs_keep_their_newest_part(
    client: httpx.AsyncClient,
    user: dict[str, str],  # noqa: F811
    runner: dict[str, str],  # noqa: F811
) -> None:
    job = (await client.post("/v1/jobs", headers=user, json=add_sub_job())).json()
    path = f"/v1/runners/{runner['id']}/lease"
    body = {"models": [{"name": "add_sub", "version": "1"}], "max_jobs": 1}
    r = await signed_post(client, runner["id"], runner["secret"], path, body)
    [leased] = r.json()["jobs"]
    long_logs = "old line\n" * 40_000 + "the last line\n"  # ~360 KiB: over what is kept
    result = {
        "job_id": leased["id"],
        "lease_token": leased["lease_token"],
        "status": "FAILED",
        "error": {"code": "triton_error", "message": "boom"},
        "logs": long_logs,
    }
    r = await complete_batch(client, runner, [result])
    assert r.json()["results"][0]["status"] == "committed", r.text  # never refused for it
    got = (await client.get(f"/v1/jobs/{job['id']}/logs", headers=user)).json()
    assert got["truncated"] is True and got["status"] == "FAILED"
    assert got["logs"].endswith("the last line\n") and len(got["logs"]) == 256 * 1024
