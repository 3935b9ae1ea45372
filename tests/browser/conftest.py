"""Fixtures for the browser tests: one headless Chromium per session, driven by Selenium.

The tests are skipped, with the reason, where Chromium, chromedriver or Selenium is
missing (Debian: `apt-get install chromium chromium-driver`; Selenium is in the `test`
extra). Selenium Manager never runs: the driver and the browser are given by path, and
SE_OFFLINE is set so that it could not download anything anyway.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = os.environ.get("LIVEPIX_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("LIVEPIX_CHROMEDRIVER", "/usr/bin/chromedriver")

CHROMIUM_FLAGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-extensions",
    "--window-size=1280,1000",
]

# Runs before the page's own scripts on every load: records what each task card shows
# (status, progress) each time it changes, so that a test can tell what a user saw even
# when it changed faster than the test polls.
CARD_RECORDER = """
(() => {
  window.__cardLog = [];
  const last = new Map();
  const snap = () => {
    for (const card of document.querySelectorAll('#task-list > li.card')) {
      const idEl = card.querySelector('code.id');
      const bar = card.querySelector('progress');
      const entry = {
        id: idEl ? idEl.title : '',
        status: card.dataset.status || '',
        label: (card.querySelector('.status') || {}).textContent || '',
        progress: bar ? Number(bar.value) : null,
        barShown: bar ? !bar.hidden : false,
      };
      const key = JSON.stringify(entry);
      if (last.get(entry.id) !== key) { last.set(entry.id, key); window.__cardLog.push(entry); }
    }
  };
  new MutationObserver(snap).observe(document, {
    subtree: true, childList: true, characterData: true, attributes: true,
    attributeFilter: ['value', 'data-status', 'hidden', 'title'],
  });
})();
"""


def _missing_browser() -> str | None:
    for name, path in (("chromium", CHROMIUM), ("chromedriver", CHROMEDRIVER)):
        if not (os.path.isfile(path) and os.access(path, os.X_OK)):
            found = shutil.which(Path(path).name)
            hint = f" (one is on PATH at {found}: set LIVEPIX_{name.upper()})" if found else ""
            return (
                f"{name} not found at {path}{hint}; install Debian's chromium and chromium-driver"
            )
    return None


@dataclass
class Page:
    """The browser for one test, and where its failure screenshot goes."""

    driver: Any
    tmp_path: Path
    base_url: str = ""


@pytest.fixture(scope="session")
def driver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """One headless Chromium for the session, with a fresh profile."""
    reason = _missing_browser()
    if reason:
        pytest.skip(reason)
    pytest.importorskip("selenium", reason="selenium is not installed (pip install -e .[test])")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    log = tmp_path_factory.mktemp("chromedriver") / "chromedriver.log"
    # With the driver's path given, Selenium skips Selenium Manager; SE_OFFLINE makes sure
    # that nothing could be downloaded even so.
    with pytest.MonkeyPatch.context() as env:
        env.setenv("SE_OFFLINE", "true")
        env.setenv("SE_AVOID_STATS", "true")
        service = Service(executable_path=CHROMEDRIVER, log_output=str(log))
        drv = webdriver.Chrome(options=options, service=service)
        try:
            drv.set_page_load_timeout(30)
            drv.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": CARD_RECORDER})
            yield drv
        finally:
            drv.quit()


@pytest.fixture
def page(driver: Any, tmp_path: Path) -> Iterator[Page]:
    """The session's browser, on a blank page; a failing test gets a screenshot."""
    p = Page(driver, tmp_path)
    driver.get_log("browser")  # drop what earlier tests left in the console
    yield p
    with contextlib.suppress(Exception):  # a dead browser fails the next test anyway
        driver.get("about:blank")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """On a failed test: save a screenshot into its tmp dir, and show the browser's console."""
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if report.when != "call" or not report.failed:
        return
    p = getattr(item, "funcargs", {}).get("page")
    if not isinstance(p, Page):
        return
    shot = p.tmp_path / f"{item.name}.png"
    try:
        p.driver.save_screenshot(str(shot))
        print(f"\nbrowser screenshot: {shot}")
        report.sections.append(("browser screenshot", str(shot)))
    except Exception as exc:  # noqa: BLE001 - the report must not fail for this
        report.sections.append(("browser screenshot", f"could not save one: {exc!r}"))
    with contextlib.suppress(Exception):
        lines = [f"{e.get('level')} {e.get('message')}" for e in p.driver.get_log("browser")]
        report.sections.append(("browser console", "\n".join(lines) or "(empty)"))
