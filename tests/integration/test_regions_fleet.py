"""Geo-aware scheduling on real processes: one control plane (``python -m control_plane serve
--embedded``, SQLite) and three ``gpufleet-runner start --backend mock`` processes, each
registered in its own region (eu-west-1, eu-central-1, us-east-1) through a join token of that
region, on loopback sockets.

- pinned jobs (``regions_allowed == [region]``) run only there;
- a job preferring a region with no runner waits ``spill_after_s`` and then runs in the
  nearest live region (London -> Dublin), or the nearest allowed one; ``waiting_reason``
  says where and when meanwhile;
- residency under load: a tenant limited to the two EU regions (settings ``tenant_regions``)
  floods the queue with jobs free to spill at once while the US runner idles: none runs
  there; a request for a region outside the limit is refused naming the field;
- synchronous inference (dispatched in memory) keeps to the same limits;
- region defaults an admin stores on an API key (SDK ``admin.set_region_defaults``) steer
  that key's jobs and calls and limit them, over the tenant's setting;
- ``GET /v1/regions`` shows the static and the measured latencies, ``GET /v1/runners`` and
  ``/metrics`` break down by region.

Processes are stopped by their pid; the module shares one control plane and three runners.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from gpufleet import Client
from gpufleet.errors import InvalidRequestError

from tests.helpers.procs import ControlPlaneProc, RunnerProc, start_control_plane

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("regions-fleet")]

REPO = Path(__file__).resolve().parents[2]
MODEL = "add_sub"
REGIONS = ("eu-west-1", "eu-central-1", "us-east-1")
EU = ["eu-west-1", "eu-central-1"]
STEP_S = 30.0  # upper bound of any one wait below (a loaded 2-core machine)
SLACK_S = 4.0  # how much later than its spill delay a job may start (lease polls, load)


@dataclass
class Fleet:
    cp: ControlPlaneProc
    admin: Client
    resid: Client  # a user of the tenant limited to the EU regions
    resid_key: str
    runners: dict[str, RunnerProc]  # region -> runner
    region_of: dict[str, str]  # runner id -> region

    def http(self, key: str | None = None) -> httpx.Client:
        token = httpx.post(
            f"{self.cp.url}/v1/auth/token",
            json={"api_key": key or self.cp.admin_key},
            timeout=STEP_S,
        ).json()["access_token"]
        return httpx.Client(
            base_url=self.cp.url, headers={"Authorization": f"Bearer {token}"}, timeout=STEP_S
        )


def wait_for(what: str, check: Callable[[], Any], timeout: float = STEP_S) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(OSError, ValueError, KeyError, httpx.HTTPError):
            got = check()
            if got:
                return got
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.1)


def inputs(rows: int = 1) -> dict[str, Any]:
    a = np.arange(rows * 4, dtype=np.float32).reshape(rows, 4)
    return {"INPUT0": a, "INPUT1": a}


def body(rows: int = 1) -> list[dict[str, Any]]:
    a = np.arange(rows * 4, dtype=np.float32)
    return [
        {"name": n, "datatype": "FP32", "shape": [rows, 4], "data": a.tolist()}
        for n in ("INPUT0", "INPUT1")
    ]


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    work = tmp_path_factory.mktemp("regions")
    env = {
        "GPUFLEET_IMPLICIT_MAX_REPLICAS": "0",  # runners serve add_sub from their own repos
        "GPUFLEET_CONTROL_PLANE_REGION": "eu-west-1",
        "GPUFLEET_REGION_SPILL_AFTER_S": "30",
        "GPUFLEET_TENANT_REGIONS": json.dumps(
            {"resid": {"default_region": "eu-west-1", "regions_allowed": EU}}
        ),
    }
    cp = start_control_plane(work / "cp", env)
    runners: dict[str, RunnerProc] = {}
    try:
        with Client(cp.url, api_key=cp.admin_key, timeout=STEP_S) as admin:
            resid_key = admin.admin.create_api_key("resid", "user").api_key
            with Client(cp.url, api_key=resid_key, timeout=STEP_S) as resid:
                resid.models.push(REPO / "model_repository" / MODEL)
                repository = work / "models"
                shutil.copytree(REPO / "model_repository" / MODEL, repository / MODEL)
                for region in REGIONS:
                    join = admin.admin.create_join_token(region).join_token
                    runners[region] = RunnerProc(
                        cp.url,
                        join,
                        work / f"runner-{region}",
                        "unused",
                        "unused",
                        repository,
                        backend="mock",
                        name=f"gf-{region}",
                    )
                    runners[region].start()
                region_of = {}
                for region, proc in runners.items():
                    region_of[proc.wait_ready(timeout=90)["runner_id"]] = region
                yield Fleet(cp, admin, resid, resid_key, runners, region_of)
    finally:
        for proc in runners.values():
            if proc.running():
                proc.terminate(timeout=20)
        cp.stop()


def finished(fleet: Fleet, client: Client, job_id: str) -> Any:
    view = client.wait(job_id, timeout=STEP_S)
    assert view.status == "SUCCEEDED", view
    return view


def test_runners_register_in_their_regions(fleet: Fleet) -> None:
    assert sorted(fleet.region_of.values()) == sorted(REGIONS)
    with fleet.http() as http:
        listed = http.get("/v1/runners").json()
        assert {r["id"]: r["region"] for r in listed["runners"]} == fleet.region_of
        assert listed["by_region"] == {r: {"ONLINE": 1} for r in sorted(REGIONS)}
        us = http.get("/v1/runners", params={"region": "us-east-1"}).json()["runners"]
        assert [r["region"] for r in us] == ["us-east-1"]


def test_pinned_jobs_run_only_in_their_region(fleet: Fleet) -> None:
    ids = {
        fleet.admin.submit(MODEL, inputs(), region=region, regions_allowed=[region]).id: region
        for region in REGIONS
        for _ in range(4)
    }
    for job_id, region in ids.items():
        view = finished(fleet, fleet.admin, job_id)
        assert fleet.region_of[view.runner_id] == region
        assert view.region == region and view.regions_allowed == [region]
    # the SDK's region setting: every job of this client carries it
    with Client(
        fleet.cp.url,
        api_key=fleet.cp.admin_key,
        timeout=STEP_S,
        region="eu-central-1",
        regions_allowed=["eu-central-1"],
    ) as pinned:
        for job_id in [pinned.submit(MODEL, inputs()).id for _ in range(4)]:
            view = finished(fleet, pinned, job_id)
            assert fleet.region_of[view.runner_id] == "eu-central-1"
            assert view.regions_allowed == ["eu-central-1"]
        out = pinned.infer(MODEL, inputs(), timeout=STEP_S)
        assert set(out) == {"OUTPUT0", "OUTPUT1"}


def test_a_preferred_job_spills_to_the_nearest_region_after_its_delay(fleet: Fleet) -> None:
    spill_s = 3.0
    # London has no runner: the nearest live region is Dublin (eu-west-1), then Frankfurt
    job = fleet.admin.submit(MODEL, inputs(), region="eu-west-2", spill_after_s=spill_s)
    early = fleet.admin.get(job.id)
    assert early.status == "QUEUED", early
    assert early.waiting_reason is not None
    assert early.waiting_reason.startswith(
        "waiting for a runner in eu-west-2; may spill to eu-west-1 in "
    ), early.waiting_reason
    view = finished(fleet, fleet.admin, job.id)
    assert fleet.region_of[view.runner_id] == "eu-west-1"
    assert view.queue_ms is not None
    assert spill_s * 1000 <= view.queue_ms < (spill_s + SLACK_S) * 1000, view.queue_ms
    # within a narrower limit the nearest *allowed* live region takes it
    job = fleet.admin.submit(
        MODEL,
        inputs(),
        region="eu-west-2",
        regions_allowed=["eu-west-2", "us-east-1"],
        spill_after_s=2.0,
    )
    view = finished(fleet, fleet.admin, job.id)
    assert fleet.region_of[view.runner_id] == "us-east-1"
    assert view.queue_ms is not None and 2000 <= view.queue_ms < (2.0 + SLACK_S) * 1000


def test_a_preferred_region_with_a_runner_gets_the_job_before_any_spill(fleet: Fleet) -> None:
    ids = [
        fleet.admin.submit(MODEL, inputs(), region="us-east-1", spill_after_s=20).id
        for _ in range(6)
    ]
    for job_id in ids:
        view = finished(fleet, fleet.admin, job_id)
        assert fleet.region_of[view.runner_id] == "us-east-1"


def test_residency_is_never_violated_under_load(fleet: Fleet) -> None:
    # free to spill at once (spill_after_s 0), while the US runner idles and long-polls
    jobs = [{"model": MODEL, "inputs": inputs(2), "spill_after_s": 0} for _ in range(100)]
    ids = fleet.resid.submit_batch(jobs) + fleet.resid.submit_batch(jobs)
    ran: dict[str, int] = {}
    for job_id in ids:
        view = finished(fleet, fleet.resid, job_id)
        assert view.region == "eu-west-1" and view.regions_allowed == EU  # tenant defaults
        region = fleet.region_of[view.runner_id]
        ran[region] = ran.get(region, 0) + 1
    assert set(ran) <= set(EU), ran
    assert sum(ran.values()) == 200
    with fleet.http(fleet.resid_key) as http:
        r = http.post("/v1/jobs", json={"model": MODEL, "inputs": body(), "region": "us-east-1"})
        assert r.status_code == 422, r.text
        assert r.json()["error"]["details"][0]["field"] == "region"
        r = http.post(
            "/v1/jobs",
            json={"model": MODEL, "inputs": body(), "regions_allowed": ["us-east-1"]},
        )
        assert r.status_code == 422, r.text
        assert r.json()["error"]["details"][0]["field"] == "regions_allowed"
        # synchronous calls of the tenant stay in the EU too (dispatched in memory)
        for _ in range(12):
            r = http.post(f"/v1/models/{MODEL}/infer", json={"inputs": body()})
            assert r.status_code == 200, r.text
            assert fleet.region_of[r.json()["runner_id"]] in EU


def test_synchronous_inference_keeps_to_its_regions(fleet: Fleet) -> None:
    with fleet.http() as http:

        def dispatched() -> bool:
            r = http.post(f"/v1/models/{MODEL}/infer", json={"inputs": body(), "timeout_s": 5})
            return r.status_code == 200 and r.json()["path"] == "dispatch"

        wait_for("dispatch to the runners' channels", dispatched)
        for region in REGIONS:
            for _ in range(4):
                r = http.post(
                    f"/v1/models/{MODEL}/infer",
                    json={"inputs": body(), "regions_allowed": [region]},
                )
                assert r.status_code == 200, r.text
                assert fleet.region_of[r.json()["runner_id"]] == region
        for _ in range(4):  # preferred: only its region's runner while one serves there
            r = http.post(
                f"/v1/models/{MODEL}/infer", json={"inputs": body(), "region": "us-east-1"}
            )
            assert fleet.region_of[r.json()["runner_id"]] == "us-east-1"


def test_regions_view_shows_static_and_measured_latency(fleet: Fleet) -> None:
    with fleet.http() as http:

        def measured() -> dict[str, Any] | None:
            table = http.get("/v1/regions").json()
            regions = {r["region"]: r for r in table["regions"]}
            if all(regions[r]["rtt_to_control_plane_ms"] is not None for r in REGIONS):
                return table
            return None

        # the second heartbeat of each runner carries the round trip of its first (5 s apart)
        table = wait_for("every region to report a round trip", measured, 40)
        assert table["control_plane_region"] == "eu-west-1"
        regions = {r["region"]: r for r in table["regions"]}
        assert {r: regions[r]["live_runners"] for r in REGIONS} == dict.fromkeys(REGIONS, 1)
        assert regions["eu-west-1"]["location"] == [53.3, -6.3]
        pairs = {(p["from_region"], p["to_region"]): p for p in table["latency"]}
        cp_pair = pairs[("eu-west-1", "us-east-1")]
        assert cp_pair["source"] == "measured" and cp_pair["measured_ms"] is not None
        assert cp_pair["static_ms"] is not None and cp_pair["rtt_ms"] == cp_pair["measured_ms"]
        other = pairs[("eu-central-1", "us-east-1")]
        assert other["source"] == "static" and other["rtt_ms"] == other["static_ms"]
        text = http.get("/metrics").text
        for region in REGIONS:
            assert f'gpufleet_region_runners{{region="{region}"}} 1.0' in text
        assert 'by_region_total{placement="spilled",region="eu-west-1"}' in text
        assert 'by_region_total{placement="preferred",region="us-east-1"}' in text


def test_an_api_keys_region_defaults_set_by_an_admin(fleet: Fleet) -> None:
    """Region defaults stored through the admin API (SDK) on a key of the EU-limited tenant:
    the key's ``default_region`` steers its jobs (over the tenant's ``tenant_regions``
    setting), its ``regions_allowed`` is never crossed (also free to spill at once, and for
    synchronous calls); the tenant's other keys keep the tenant's default."""
    admin = fleet.admin.admin
    key = admin.create_api_key("resid", "user")
    with pytest.raises(InvalidRequestError) as err:  # wider than its tenant's limit
        admin.set_region_defaults(key_id=key.id, regions_allowed=["us-east-1"])
    assert err.value.field == "regions_allowed[0]"
    view = admin.set_region_defaults(key_id=key.id, default_region="eu-central-1")
    assert (view.effective.default_region, view.effective.regions_allowed) == ("eu-central-1", EU)
    with Client(fleet.cp.url, api_key=key.api_key, timeout=STEP_S) as keyed:
        ids = [keyed.submit(MODEL, inputs()).id for _ in range(6)]
        for job_id in ids:
            done = finished(fleet, keyed, job_id)
            assert (done.region, done.regions_allowed) == ("eu-central-1", EU)
            assert fleet.region_of[done.runner_id] == "eu-central-1"
        # narrowed to one region, and free to spill at once: still never elsewhere
        admin.set_region_defaults(key_id=key.id, regions_allowed=["eu-central-1"])
        jobs = [{"model": MODEL, "inputs": inputs(2), "spill_after_s": 0} for _ in range(60)]
        ran: dict[str, int] = {}
        for job_id in keyed.submit_batch(jobs):
            region = fleet.region_of[finished(fleet, keyed, job_id).runner_id]
            ran[region] = ran.get(region, 0) + 1
        assert ran == {"eu-central-1": 60}, ran
    with fleet.http(key.api_key) as http:
        for _ in range(6):
            r = http.post(f"/v1/models/{MODEL}/infer", json={"inputs": body()})
            assert r.status_code == 200, r.text
            assert fleet.region_of[r.json()["runner_id"]] == "eu-central-1"
        r = http.post("/v1/jobs", json={"model": MODEL, "inputs": body(), "region": "eu-west-1"})
        assert r.status_code == 422 and r.json()["error"]["details"][0]["field"] == "region"
    done = finished(fleet, fleet.resid, fleet.resid.submit(MODEL, inputs()).id)
    assert (done.region, done.regions_allowed) == ("eu-west-1", EU)  # the tenant's setting
    assert admin.reset_region_defaults(key_id=key.id).source == "none"
