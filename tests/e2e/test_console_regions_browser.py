"""The console's region view in a real headless Chromium (Debian's, through selenium) against
a real embedded control plane process on a loopback socket: runners of two regions (their
heartbeats signed and sent over HTTP as a runner sends them, with a measured round trip) show
in the region table, the latency table marks the measured pair, and a third region's runner
appears without a reload (the page's live part polls). No Docker: no Triton is needed to
show regions."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from gpufleet import Client, signing
from selenium.webdriver.common.keys import Keys

from tests.helpers.chromium import BrowserUnavailable, artifacts_dir, start_browser, text, wait_for
from tests.helpers.procs import ControlPlaneProc, start_control_plane

# one browser per module, signed in by the first test: both tests stay on one xdist worker
pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(300),
    pytest.mark.xdist_group("console-regions-browser"),
]
GPU = {"index": 0, "uuid": "GPU-x", "name": "A100", "memory_total_mb": 40960, "memory_used_mb": 0}


@pytest.fixture(scope="module")
def chrome() -> Iterator[Any]:
    try:
        browser = start_browser()
    except BrowserUnavailable as exc:
        pytest.skip(str(exc))
    try:
        yield browser
    finally:
        browser.quit()


@pytest.fixture(scope="module")
def cp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlaneProc]:
    work = tmp_path_factory.mktemp("console-regions")
    proc = start_control_plane(
        work / "cp",
        {"GPUFLEET_CONTROL_PLANE_REGION": "eu-west-1", "GPUFLEET_REGION_SPILL_AFTER_S": "12"},
    )
    try:
        yield proc
    finally:
        proc.stop()


def runner_in(cp: ControlPlaneProc, name: str, region: str, rtt_ms: float | None) -> None:
    """Register a runner in ``region`` and send one signed heartbeat, as the runner does."""
    with Client(cp.url, api_key=cp.admin_key, timeout=30.0) as admin:
        token = admin.admin.create_join_token(region=region).join_token
    with httpx.Client(base_url=cp.url, timeout=30.0) as http:
        r = http.post("/v1/runners/register", json={"join_token": token, "name": name})
        assert r.status_code == 201, r.text
        rid, secret = r.json()["runner_id"], r.json()["secret"]
        body: dict[str, Any] = {"gpus": [GPU], "models": []}
        if rtt_ms is not None:
            body["rtt_ms"] = rtt_ms
        raw = json.dumps(body).encode()
        path = f"/v1/runners/{rid}/heartbeat"
        h = signing.sign_headers(rid, secret, "POST", path, body=raw)
        r = http.post(path, content=raw, headers={**h, "Content-Type": "application/json"})
        assert r.status_code == 200, r.text


def test_fleet_page_shows_regions_live(chrome: Any, cp: ControlPlaneProc) -> None:
    runner_in(cp, "eu-host", "eu-west-1", None)
    runner_in(cp, "us-host", "us-east-1", 81.5)
    url = cp.url.rstrip("/") + "/console"
    chrome.get(url + "/fleet")
    wait_for(chrome, lambda b: b.find_elements("id", "api_key"), 20, "the sign-in form")
    chrome.find_element("id", "api_key").send_keys(cp.admin_key + Keys.ENTER)
    wait_for(chrome, lambda b: b.find_elements("id", "region-table"), 30, "the region table")
    us = text(chrome, '#region-table tr[data-region="us-east-1"]')
    assert us.split() == ["us-east-1", "1", "81.5", "ms", "1"], us
    assert "eu-west-1" in text(chrome, "#region-table") and "eu-west-1" in text(
        chrome, ".regions p"
    )
    pair = text(chrome, '#latency-table tr[data-pair="eu-west-1:us-east-1"]')
    assert pair.split()[-1] == "measured" and "81.5 ms" in pair, pair
    # each runner card names its region
    cards = text(chrome, ".grid")
    assert "us-east-1" in cards and "eu-west-1" in cards
    # a runner in a third region shows up without a reload
    runner_in(cp, "ap-host", "ap-southeast-1", 160.0)
    wait_for(
        chrome,
        lambda b: "160.0 ms" in text(b, '#region-table tr[data-region="ap-southeast-1"]'),
        30,
        "the new region in the live table",
    )
    assert "static" in text(chrome, '#latency-table tr[data-pair="ap-southeast-1:us-east-1"]')
    chrome.save_screenshot(str(Path(artifacts_dir()) / "regions-fleet.png"))


def test_admin_page_shows_region_defaults(chrome: Any, cp: ControlPlaneProc) -> None:
    with Client(cp.url, api_key=cp.admin_key, timeout=30.0) as admin:
        admin.admin.set_region_defaults(
            tenant="acme", default_region="eu-west-1", regions_allowed=["eu-west-1", "us-east-1"]
        )
    chrome.get(cp.url.rstrip("/") + "/console/admin")
    wait_for(chrome, lambda b: b.find_elements("id", "region-defaults"), 30, "the table")
    row = text(chrome, '#region-defaults tr[data-name="acme"]')
    assert "eu-west-1, us-east-1" in row and "stored" in row, row
    chrome.save_screenshot(str(Path(artifacts_dir()) / "regions-admin.png"))
