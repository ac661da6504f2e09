"""The console in a real headless Chromium (Debian's, through selenium) against the real
fleet: an embedded control plane process (uvicorn on a loopback socket) and a real runner
(docker backend) with the CPU Triton container.

In order, on one fleet and one browser: sign in and see the runner; push add_sub (SDK),
deploy it from the model page and watch it become READY there; "try it"; submit jobs and see
them finish on the jobs page without a reload; cancel a queued job from its page; a viewer
sees no write controls and a forged write is refused; a request without the CSRF token is
refused; another tenant's job page is "Not found". Each page's screenshot is saved under
``tests/helpers/chromium.artifacts_dir()`` (not committed).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from gpufleet import Client
from selenium.webdriver.common.keys import Keys

from tests.e2e.test_fleet_docker import remove_containers
from tests.helpers.chromium import (
    BrowserUnavailable,
    artifacts_dir,
    attrs,
    start_browser,
    text,
    wait_for,
)
from tests.helpers.procs import ControlPlaneProc, RunnerProc, start_control_plane

pytestmark = [
    pytest.mark.docker,
    pytest.mark.slow,
    pytest.mark.timeout(600),
    pytest.mark.xdist_group("console-browser"),
]
MODEL = "add_sub"
INPUT0, INPUT1 = [[1, 2, 3, 4]], [[1, 1, 1, 1]]
FEED = {"INPUT0": np.array(INPUT0, np.float32), "INPUT1": np.array(INPUT1, np.float32)}


class Fleet:
    def __init__(self, cp: ControlPlaneProc, admin: Client, runner: RunnerProc) -> None:
        self.cp, self.admin, self.runner = cp, admin, runner
        self.url = cp.url.rstrip("/") + "/console"


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
def fleet(
    docker_host: str,
    triton_image: str,
    model_repository: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Fleet]:
    work = tmp_path_factory.mktemp("console-fleet")
    cp = start_control_plane(work / "cp", {"GPUFLEET_ROLLUP_FLUSH_INTERVAL_S": "0.5"})
    try:
        with Client(cp.url, api_key=cp.admin_key, timeout=30.0) as admin:
            token = admin.admin.create_join_token(region="default").join_token
            empty = work / "models"
            empty.mkdir()
            runner = RunnerProc(cp.url, token, work / "runner", docker_host, triton_image, empty)
            runner.start()
            try:
                yield Fleet(cp, admin, runner)
            finally:
                if runner.running():
                    runner.terminate()
                remove_containers(docker_host, runner.name)
    finally:
        cp.stop()


def shot(browser: Any, name: str) -> None:
    browser.save_screenshot(str(artifacts_dir() / f"{name}.png"))


def sign_in(browser: Any, fleet: Fleet, api_key: str, then: str = "/fleet") -> None:
    browser.delete_all_cookies()
    browser.get(fleet.url + then)
    wait_for(browser, lambda b: b.find_elements("id", "api_key"), 20, "the sign-in form")
    browser.find_element("id", "api_key").send_keys(api_key + Keys.ENTER)  # keyboard only
    wait_for(browser, lambda b: b.find_elements("id", "whoami"), 20, "a signed-in page")


def post_from_page(browser: Any, path: str, fields: dict[str, str]) -> dict[str, Any]:
    """``fetch`` a POST from inside the page (same origin, its cookies): status and text."""
    script = """
        const [path, fields, done] = arguments;
        fetch(path, {method: 'POST', body: new URLSearchParams(fields), redirect: 'manual'})
          .then(async r => done({status: r.status, text: await r.text()}))
          .catch(e => done({status: -1, text: String(e)}));
    """
    return dict(browser.execute_async_script(script, path, fields))


# --------------------------------------------------------------------------- the flow


def test_sign_in_and_see_the_runner(chrome: Any, fleet: Fleet) -> None:
    chrome.get(fleet.url + "/jobs")
    wait_for(chrome, lambda b: "/console/signin" in b.current_url, 20, "the sign-in redirect")
    shot(chrome, "01-signin")
    chrome.find_element("id", "api_key").send_keys("gf_key_wrong_secret")
    chrome.find_element("css selector", "#signin-form button[type=submit]").click()
    wait_for(chrome, lambda b: b.find_elements("id", "signin-error"), 20, "the refusal")
    sign_in(chrome, fleet, fleet.cp.admin_key)
    card = wait_for(
        chrome,
        lambda b: b.find_elements("css selector", "article.runner[data-state=healthy]"),
        240,
        "a healthy runner card",
    )[0]
    assert fleet.runner.name in card.text
    wait_for(chrome, lambda b: text(b, ".runner .triton") == "ready", 240, "Triton ready")
    assert "No GPU (CPU-only host)." in text(chrome, ".runner")
    assert chrome.find_elements("css selector", "button.drain")  # an admin may drain
    shot(chrome, "02-fleet")


def test_push_deploy_and_watch_the_model_become_ready(chrome: Any, fleet: Fleet) -> None:
    fleet.admin.models.push(Path(__file__).resolve().parents[2] / "model_repository" / MODEL)
    chrome.get(f"{fleet.url}/models")
    wait_for(chrome, lambda b: "READY" in text(b, "#models-table"), 30, "add_sub v1 READY")
    chrome.get(f"{fleet.url}/models/{MODEL}")
    form = chrome.find_element("id", "deployment-form")
    for name, value in (("min_replicas", "1"), ("max_replicas", "1")):
        field = form.find_element("name", name)
        field.clear()
        field.send_keys(value)
    form.find_element("css selector", "button[type=submit]").click()
    # The page is not reloaded again: its live part shows the runner load the model.
    wait_for(
        chrome,
        lambda b: "READY" in text(b, "#observed"),
        240,
        "the replica READY on the runner",
    )
    assert "the plan asks for 1, 1 ready" in text(chrome, "#deployment-summary")
    shot(chrome, "03-model")


def test_try_it(chrome: Any, fleet: Fleet) -> None:
    chrome.get(f"{fleet.url}/models/{MODEL}")
    for name, value in (("INPUT0", INPUT0), ("INPUT1", INPUT1)):
        area = chrome.find_element("id", f"in-{name}")
        area.clear()
        area.send_keys(str(value))
    chrome.find_element("css selector", "#try-form button[type=submit]").click()
    wait_for(chrome, lambda b: b.find_elements("id", "try-result"), 60, "the try-it result")
    out0 = text(chrome, "#try-result tr[data-output=OUTPUT0] code")
    out1 = text(chrome, "#try-result tr[data-output=OUTPUT1] code")
    assert [float(x) for x in out0.strip("[]").split(",")] == [2, 3, 4, 5]
    assert [float(x) for x in out1.strip("[]").split(",")] == [0, 1, 2, 3]
    chrome.execute_script("document.getElementById('try-h').scrollIntoView()")
    shot(chrome, "04-try-it")
    chrome.get(f"{fleet.url}/fleet")
    wait_for(
        chrome,
        lambda b: attrs(b, ".runner tr[data-model=add_sub]", "data-state") == ["READY"],
        20,
        "add_sub READY on the runner's card",
    )
    shot(chrome, "04-fleet-loaded")


def test_jobs_finish_live_and_a_queued_one_is_cancelled(chrome: Any, fleet: Fleet) -> None:
    chrome.get(f"{fleet.url}/jobs?model={MODEL}")
    chrome.execute_script("window.__sameDocument = 'yes'")
    ids = [fleet.admin.submit(MODEL, FEED).id for _ in range(5)]

    def all_succeeded(b: Any) -> bool:
        done = attrs(b, '#jobs-table tr[data-status="SUCCEEDED"]', "data-job")
        return set(ids) <= set(done)

    wait_for(chrome, all_succeeded, 120, "5 jobs SUCCEEDED on the page")
    assert chrome.execute_script("return window.__sameDocument") == "yes"  # no reload
    shot(chrome, "05-jobs")

    stuck = fleet.admin.submit(MODEL, FEED, region="nowhere")
    chrome.get(f"{fleet.url}/jobs/{stuck.id}")
    assert text(chrome, "#job-status") == "QUEUED"
    chrome.find_element("css selector", "#cancel-form button").click()
    wait_for(chrome, lambda b: text(b, "#job-status") == "CANCELLED", 30, "CANCELLED")
    steps = attrs(chrome, "#timeline li", "data-step")
    assert steps == ["QUEUED", "CANCELLED"]
    assert fleet.admin.get(stuck.id).status == "CANCELLED"
    chrome.get(f"{fleet.url}/jobs/{ids[0]}")
    assert text(chrome, "#job-status") == "SUCCEEDED"
    assert attrs(chrome, "#timeline li", "data-step") == ["QUEUED", "RUNNING", "SUCCEEDED"]
    shot(chrome, "06-job")


def test_charts_show_the_jobs(chrome: Any, fleet: Fleet) -> None:
    def drawn(b: Any) -> bool:
        b.get(f"{fleet.url}/charts")
        wait_for(b, lambda b: attrs(b, "#chart-jobs", "data-loaded") == ["yes"], 20, "a chart")
        return "SUCCEEDED: latest" in text(b, "#chart-jobs .summary")

    wait_for(chrome, drawn, 60, "the jobs chart with SUCCEEDED jobs")
    assert chrome.find_elements("css selector", "#chart-jobs .plot canvas")  # uPlot drew
    assert attrs(chrome, "#chart-jobs", "data-points") == ["60"]
    for kind in ("queue", "gpu"):  # admins get the fleet's charts too
        assert chrome.find_elements("id", f"chart-{kind}")
    shot(chrome, "07-charts")


def test_viewer_csrf_and_other_tenants(chrome: Any, fleet: Fleet) -> None:
    queued = fleet.admin.submit(MODEL, FEED, region="nowhere")
    viewer = fleet.admin.admin.create_api_key("default", "viewer", "console-viewer").api_key
    sign_in(chrome, fleet, viewer)
    wait_for(chrome, lambda b: b.find_elements("css selector", "article.runner"), 20, "runners")
    assert not chrome.find_elements("css selector", "button.drain, #runner-set-form")
    chrome.get(f"{fleet.url}/models/{MODEL}")
    assert not chrome.find_elements("css selector", "#deployment-form, #try-form")
    chrome.get(f"{fleet.url}/jobs/{queued.id}")
    assert text(chrome, "#job-status") == "QUEUED"
    assert not chrome.find_elements("id", "cancel-form")
    shot(chrome, "08-viewer-job")
    csrf = chrome.find_element("css selector", "input[name=csrf]").get_attribute("value")
    forged = post_from_page(chrome, f"/console/jobs/{queued.id}/cancel", {"csrf": csrf})
    assert forged["status"] == 403 and "jobs:write" in forged["text"]
    no_token = post_from_page(chrome, f"/console/jobs/{queued.id}/cancel", {})
    assert no_token["status"] == 403 and "CSRF" in no_token["text"]
    assert fleet.admin.get(queued.id).status == "QUEUED"

    other = fleet.admin.admin.create_api_key("globex", "user", "console-other").api_key
    sign_in(chrome, fleet, other)
    chrome.get(f"{fleet.url}/jobs/{queued.id}")
    assert text(chrome, "h1") == "Not found"
    chrome.get(f"{fleet.url}/models/{MODEL}")
    assert text(chrome, "h1") == "Not found"
    shot(chrome, "09-other-tenant")
    fleet.admin.cancel(queued.id)


def test_no_script_errors_or_policy_violations(chrome: Any, fleet: Fleet) -> None:
    """Every page's scripts (htmx, uPlot, charts.js) run under the console's CSP."""
    sign_in(chrome, fleet, fleet.cp.admin_key)
    chrome.get_log("browser")  # drop what came before
    for path in ("/fleet", "/models", f"/models/{MODEL}", "/jobs", "/charts", "/admin"):
        chrome.get(fleet.url + path)
        wait_for(chrome, lambda b: b.execute_script("return !!window.htmx"), 10, "htmx")
    chrome.get(fleet.url + "/charts")
    wait_for(chrome, lambda b: attrs(b, "#chart-jobs", "data-loaded") == ["yes"], 20, "a chart")
    problems = [e for e in chrome.get_log("browser") if e["level"] in ("SEVERE", "WARNING")]
    assert problems == []


def test_keyboard_reaches_the_content_first(chrome: Any, fleet: Fleet) -> None:
    chrome.get(f"{fleet.url}/jobs")
    body = chrome.find_element("tag name", "body")
    body.send_keys(Keys.TAB)
    active = "return [document.activeElement.className, document.activeElement.id]"
    assert chrome.execute_script(active) == ["skip", ""]
    chrome.switch_to.active_element.send_keys(Keys.ENTER)
    assert chrome.execute_script(active) == ["", "main"]
    chrome.switch_to.active_element.send_keys(Keys.TAB)  # then the first filter field
    assert chrome.execute_script("return document.activeElement.name") == "status"


def test_phone_width_and_sign_out(chrome: Any, fleet: Fleet) -> None:
    sign_in(chrome, fleet, fleet.cp.admin_key)
    phone = {"width": 390, "height": 844, "deviceScaleFactor": 2, "mobile": True}
    chrome.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", phone)
    try:
        chrome.get(f"{fleet.url}/fleet")
        wait_for(chrome, lambda b: b.find_elements("css selector", "article.runner"), 20, "runners")
        inner, width = chrome.execute_script(
            "return [window.innerWidth, document.documentElement.scrollWidth]"
        )
        wide = chrome.execute_script(
            "return [...document.querySelectorAll('body *')].filter(e => "
            "e.getBoundingClientRect().right > 391).slice(0, 8).map(e => e.tagName + '.' + "
            "e.className + ' ' + Math.round(e.getBoundingClientRect().right))"
        )
        assert inner == 390, wide
        assert width <= inner, f"the fleet page scrolls sideways on a phone ({width}px)"
        shot(chrome, "10-fleet-phone")
    finally:
        chrome.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
    chrome.find_element("css selector", ".who button").click()
    wait_for(chrome, lambda b: b.find_elements("id", "api_key"), 20, "the sign-in page")
    chrome.get(f"{fleet.url}/fleet")
    wait_for(chrome, lambda b: "/console/signin" in b.current_url, 20, "signed out")
