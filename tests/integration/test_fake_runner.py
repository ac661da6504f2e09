"""A fake runner over a real socket: register -> heartbeat -> lease -> extend -> complete,
with real HMAC-signed httpx calls against uvicorn on 127.0.0.1."""

from __future__ import annotations

import httpx

from control_plane.composition import Services
from tests.control_plane.api.helpers import add_sub_job, add_sub_outputs, push_model, signed_post

GPU = {
    "index": 0,
    "uuid": "GPU-0",
    "name": "Fake",
    "memory_total_mb": 16000,
    "memory_used_mb": 2000,
    "utilization_pct": 55.0,
}


async def test_fake_runner_round_trip(live_server: str, live_services: Services) -> None:
    admin_key = live_services.auth.issue_api_key("default", "admin", "t").api_key
    async with httpx.AsyncClient(base_url=live_server, timeout=30) as c:
        tok = (await c.post("/v1/auth/token", json={"api_key": admin_key})).json()["access_token"]
        admin = {"Authorization": f"Bearer {tok}"}
        await push_model(c, admin)
        join = (await c.post("/v1/admin/join-tokens", headers=admin, json={})).json()["join_token"]
        reg = (
            await c.post("/v1/runners/register", json={"join_token": join, "name": "fake"})
        ).json()
        rid, secret = reg["runner_id"], reg["secret"]
        base = f"/v1/runners/{rid}"

        job_id = (await c.post("/v1/jobs", headers=admin, json=add_sub_job())).json()["id"]
        hb = {
            "gpus": [GPU],
            "models": [{"name": "add_sub", "version": "1", "state": "READY"}],
            "triton": {"models": {"add_sub": {"success": 3, "failure": 0}}},
        }
        r = await signed_post(c, rid, secret, f"{base}/heartbeat", hb)
        assert r.status_code == 200, r.text

        r = await signed_post(
            c,
            rid,
            secret,
            f"{base}/lease",
            {"models": [{"name": "add_sub", "version": "1"}], "max_jobs": 4, "wait_s": 5},
        )
        assert r.status_code == 200, r.text
        (leased,) = r.json()["jobs"]
        assert leased["id"] == job_id and leased["attempt"] == 1
        assert [t["name"] for t in leased["inputs"]] == ["INPUT0", "INPUT1"]

        r = await signed_post(c, rid, secret, f"{base}/heartbeat", {**hb, "running_jobs": [job_id]})
        assert r.json()["cancel_jobs"] == []
        assert (await c.get(f"/v1/jobs/{job_id}", headers=admin)).json()["status"] == "RUNNING"

        r = await signed_post(
            c, rid, secret, f"{base}/jobs/{job_id}/extend", {"lease_token": leased["lease_token"]}
        )
        assert r.status_code == 200, r.text
        assert r.json()["lease_expires_at"] >= leased["lease_expires_at"]

        r = await signed_post(
            c,
            rid,
            secret,
            f"{base}/jobs/{job_id}/complete",
            {"lease_token": "stale-token", "status": "SUCCEEDED", "outputs": add_sub_outputs()},
        )
        assert r.status_code == 409, r.text
        r = await signed_post(
            c,
            rid,
            secret,
            f"{base}/jobs/{job_id}/complete",
            {
                "lease_token": leased["lease_token"],
                "status": "SUCCEEDED",
                "outputs": add_sub_outputs(),
                "timings": {"infer_ms": 1.5},
            },
        )
        assert r.status_code == 200, r.text
        assert r.json()["status"] == "SUCCEEDED"

        job = (await c.get(f"/v1/jobs/{job_id}?wait_s=5", headers=admin)).json()
        assert job["status"] == "SUCCEEDED" and job["runner_id"] == rid
        assert job["outputs"][0]["data"] == [2, 3, 4, 5]

        metrics = (await c.get("/metrics", headers=admin)).text
        assert f'gpufleet_runner_gpu_utilization_percent{{gpu="0",runner="{rid}"}} 55.0' in metrics
        assert (
            f'gpufleet_triton_inference_success_total{{model="add_sub",runner="{rid}"}} 3.0'
            in metrics
        )
        assert 'gpufleet_lease_duration_seconds_count{outcome="jobs"} 1.0' in metrics
        assert 'gpufleet_jobs_submitted_total{model="add_sub"} 1.0' in metrics
        assert 'gpufleet_jobs_completed_total{model="add_sub",status="SUCCEEDED"} 1.0' in metrics
        for phase in ("queue", "run", "total"):  # the job-latency histogram, by phase
            assert (
                f'gpufleet_job_duration_seconds_count{{model="add_sub",phase="{phase}"}} 1.0'
                in metrics
            )
