"""A real headless Chromium for browser tests: Debian's ``chromium`` and ``chromedriver``
(scripts/install-rig-deps.sh installs them) driven through selenium, which is pointed at
both executables, so it never downloads a browser or a driver.

``start_browser()`` raises ``BrowserUnavailable`` with the reason only when the browser
truly cannot start (not installed, or it exits at launch); the tests skip with that reason.
Screenshots go to ``artifacts_dir()``: ``$GPUFLEET_TEST_ARTIFACTS/console`` or
``.cache/test-artifacts/console`` (not committed).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
CANDIDATES = ("chromium", "chromium-browser", "google-chrome")


class BrowserUnavailable(RuntimeError):
    """No Chromium could be started here (the message says why)."""


def artifacts_dir() -> Path:
    base = os.environ.get("GPUFLEET_TEST_ARTIFACTS")
    root = Path(base) if base else REPO / ".cache" / "test-artifacts"
    path = root / "console"
    path.mkdir(parents=True, exist_ok=True)
    return path


def start_browser(width: int = 1280, height: int = 900) -> Any:
    """A selenium ``webdriver.Chrome`` on the system's headless Chromium."""
    try:
        from selenium import webdriver
        from selenium.common.exceptions import WebDriverException
        from selenium.webdriver.chrome.service import Service
    except ImportError as exc:
        raise BrowserUnavailable(f"selenium is not installed ({exc}): make install") from exc
    binary = next((p for p in map(shutil.which, CANDIDATES) if p), None)
    driver = shutil.which("chromedriver")
    if binary is None or driver is None:
        raise BrowserUnavailable(
            "Debian's chromium and chromium-driver are not installed: run "
            "scripts/install-rig-deps.sh (make rig-deps)"
        )
    opts = webdriver.ChromeOptions()
    opts.binary_location = binary
    for arg in (
        "--headless=new",
        "--no-sandbox",  # root in CI containers
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--disable-extensions",
        "--disable-background-networking",
        f"--window-size={width},{height}",
    ):
        opts.add_argument(arg)
    try:
        return webdriver.Chrome(service=Service(executable_path=driver), options=opts)
    except WebDriverException as exc:
        raise BrowserUnavailable(f"chromium did not start: {exc.msg}") from exc


def wait_for(browser: Any, check: Callable[[Any], Any], timeout: float, what: str) -> Any:
    """``check(browser)`` until truthy (its value), else a failure naming ``what`` with the
    page's text."""
    from selenium.common.exceptions import StaleElementReferenceException, TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(
        browser, timeout, poll_frequency=0.2, ignored_exceptions=[StaleElementReferenceException]
    )
    try:
        return wait.until(check)
    except TimeoutException:
        text = browser.find_element("tag name", "body").text
        raise AssertionError(
            f"timed out after {timeout}s waiting for {what} on {browser.current_url}:\n{text}"
        ) from None


def text(browser: Any, css: str) -> str:
    """The rendered text of the first element matching ``css`` ("" when none), read in one
    script call: live regions are swapped under the driver's element references."""
    return str(
        browser.execute_script(
            "const e = document.querySelector(arguments[0]); return e ? e.innerText : '';", css
        )
    )


def attrs(browser: Any, css: str, name: str) -> list[str]:
    """Attribute ``name`` of every element matching ``css``, read in one script call."""
    return list(
        browser.execute_script(
            "return [...document.querySelectorAll(arguments[0])]"
            ".map(e => e.getAttribute(arguments[1]));",
            css,
            name,
        )
    )
