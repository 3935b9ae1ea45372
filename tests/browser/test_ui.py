"""The browser UI end to end: real headless Chromium against the real running service.

Each test is something a user would notice: a result appearing with live progress, the
mask brush, a reload in the middle of a task, Cancel, and errors in plain words.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.browser.conftest import Page
from tests.clients import slow_removal, submit, two_tone, wait_status
from tests.conftest import Stack

pytest.importorskip("selenium", reason="selenium is not installed (pip install -e .[test])")

from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import Select, WebDriverWait

WAIT_S = 30
TERMINAL = {"SUCCESS", "FAILURE", "REVOKED"}
STATUS_ORDER = {
    "UNKNOWN": 0,
    "PENDING": 1,
    "PROCESSING": 2,
    "SUCCESS": 3,
    "FAILURE": 3,
    "REVOKED": 3,
}


# --- helpers -------------------------------------------------------------------------------


def wait(page: Page, condition: Any, what: str, timeout_s: float = WAIT_S) -> Any:
    return WebDriverWait(page.driver, timeout_s, poll_frequency=0.05).until(
        lambda d: condition(), message=f"timed out after {timeout_s} s waiting for {what}"
    )


def open_ui(page: Page, base_url: str) -> None:
    """Open the UI with an empty task list, and wait until its WebSocket is live."""
    page.base_url = base_url
    # Clear the origin's storage from a page that runs no app.js (its pagehide would save
    # the old task list again).
    page.driver.get(base_url + "/static/app.css")
    page.driver.execute_script("localStorage.clear()")
    page.driver.get(base_url + "/")
    wait_live(page)


def wait_live(page: Page) -> None:
    conn = page.driver.find_element(By.ID, "conn")
    wait(page, lambda: conn.get_attribute("data-state") == "live", "the connection to be live")
    assert conn.text == "Live"


def choose_type(page: Page, task_type: str) -> None:
    Select(page.driver.find_element(By.ID, "task_type")).select_by_value(task_type)


def write_png(path: Path, image: Any) -> Path:
    image.save(path, format="PNG")
    return path


def upload(page: Page, path: Path) -> None:
    """Choose a file in the image slot, as the file picker would."""
    zone = page.driver.find_element(By.CSS_SELECTOR, '.drop[data-slot="image"]')
    zone.find_element(By.CSS_SELECTOR, 'input[type="file"]').send_keys(str(path))


def wait_uploaded(page: Page, path: Path) -> None:
    text = page.driver.find_element(By.CSS_SELECTOR, '.drop[data-slot="image"] .drop-text')
    wait(page, lambda: text.text.startswith(path.name + ":"), f"{path.name} to be taken")


def card_ids(page: Page) -> list[str]:
    ids: list[str] = page.driver.execute_script(
        "return [...document.querySelectorAll('#task-list > li.card code.id')].map((e) => e.title)"
    )
    return ids


def submit_form(page: Page) -> str:
    """Click Submit and return the id of the task card that appears."""
    before = set(card_ids(page))
    page.driver.find_element(By.ID, "submit").click()
    new: list[str] = []

    def appeared() -> bool:
        new[:] = [i for i in card_ids(page) if i not in before]
        return bool(new)

    wait(page, appeared, "the new task's card")
    assert len(new) == 1, new
    return new[0]


def cards_of(page: Page, task_id: str) -> list[WebElement]:
    css = f'#task-list > li.card:has(code.id[title="{task_id}"])'
    found: list[WebElement] = page.driver.find_elements(By.CSS_SELECTOR, css)
    return found


def card(page: Page, task_id: str) -> WebElement:
    found: WebElement = wait(
        page, lambda: next(iter(cards_of(page, task_id)), None), f"the card of {task_id}"
    )
    return found


def wait_card_status(
    page: Page, task_id: str, status: str, timeout_s: float = WAIT_S
) -> WebElement:
    def reached() -> WebElement | None:
        found = cards_of(page, task_id)
        if not found:
            return None
        shown = found[0].get_attribute("data-status")
        if shown in TERMINAL and shown != status:  # fail at once, with what the card says
            raise AssertionError(f"the card shows {shown}, not {status}: {found[0].text!r}")
        return found[0] if shown == status else None

    result: WebElement = wait(page, reached, f"the card of {task_id} to show {status}", timeout_s)
    return result


def card_log(page: Page, task_id: str) -> list[dict[str, Any]]:
    """What the card showed, change by change, since the page was loaded."""
    log: list[dict[str, Any]] = page.driver.execute_script("return window.__cardLog || []")
    return [e for e in log if e["id"] == task_id]


def assert_result_shown(page: Page, el: WebElement, size: tuple[int, int] | None = None) -> None:
    """The result image is shown, decoded, with a working download link."""
    figure = el.find_element(By.CSS_SELECTOR, "figure.result")
    assert figure.is_displayed()
    img = figure.find_element(By.TAG_NAME, "img")
    wait(
        page,
        lambda: page.driver.execute_script(
            "return arguments[0].complete && arguments[0].naturalWidth > 0", img
        ),
        "the result image to decode",
    )
    src = img.get_attribute("src") or ""
    assert src.startswith(("data:image/", "blob:")), src[:40]
    natural = tuple(
        page.driver.execute_script(
            "return [arguments[0].naturalWidth, arguments[0].naturalHeight]", img
        )
    )
    if size is not None:
        assert natural == size
    link = figure.find_element(By.CSS_SELECTOR, "a.download")
    assert link.is_displayed() and link.text == "Download PNG"
    assert (link.get_attribute("href") or "").startswith(("data:image/png", "blob:"))
    assert (link.get_attribute("download") or "").endswith(".png")
    assert not el.find_element(By.CSS_SELECTOR, "progress").is_displayed()
    assert not el.find_element(By.CSS_SELECTOR, "button.cancel").is_displayed()


def assert_no_page_errors(page: Page) -> None:
    """No script error or failed request in the console (but the favicon the UI has not)."""
    errors = [
        e["message"]
        for e in page.driver.get_log("browser")
        if e["level"] == "SEVERE" and "/favicon.ico" not in e["message"]
    ]
    assert errors == []


def assert_in_order(log: list[dict[str, Any]]) -> None:
    """The card never went back: no status or progress shown twice out of order."""
    ranks = [STATUS_ORDER[e["status"]] for e in log]
    assert ranks == sorted(ranks), [e["status"] for e in log]
    running = [e["progress"] for e in log if e["status"] == "PROCESSING"]
    assert running == sorted(running), running


# --- tests ---------------------------------------------------------------------------------


def test_background_removal_shows_progress_and_result(page: Page, stack: Stack) -> None:
    open_ui(page, stack.url)
    choose_type(page, "background_removal")
    image = write_png(page.tmp_path / "subject.png", two_tone(96, 64))
    upload(page, image)
    wait_uploaded(page, image)
    preview = page.driver.find_element(By.CSS_SELECTOR, '.drop[data-slot="image"] img')
    assert preview.is_displayed()

    task_id = submit_form(page)
    el = wait_card_status(page, task_id, "SUCCESS")
    assert el.find_element(By.CSS_SELECTOR, ".status").text == "Done"
    assert el.find_element(By.CSS_SELECTOR, ".type").text == "Background removal"
    assert_result_shown(page, el, (96, 64))

    log = card_log(page, task_id)
    statuses = [e["status"] for e in log]
    assert statuses[0] == "PENDING" and statuses[-1] == "SUCCESS", statuses
    # the bar moved while it ran: the worker reports 10, 90 and 95 %
    moving = [e["progress"] for e in log if e["status"] == "PROCESSING" and e["barShown"]]
    assert any(0 < p < 100 for p in moving), log
    assert_in_order(log)
    assert page.driver.find_element(By.ID, "form-errors").is_displayed() is False
    assert_no_page_errors(page)


def test_object_removal_with_a_painted_mask(page: Page, stack: Stack) -> None:
    open_ui(page, stack.url)
    choose_type(page, "object_removal")
    hint = page.driver.find_element(By.ID, "mask-hint")
    assert hint.text == "Choose an image first."
    image = write_png(page.tmp_path / "scene.png", two_tone(200, 150))
    upload(page, image)
    canvas = page.driver.find_element(By.ID, "mask-canvas")
    wait(page, canvas.is_displayed, "the mask editor")
    assert page.driver.execute_script(
        "return [arguments[0].width, arguments[0].height]", canvas
    ) == [200, 150]
    assert "Paint over the object" in hint.text

    # one stroke across the red square, as a user drags the mouse
    box = canvas.rect
    actions = ActionChains(page.driver, duration=20)
    actions.move_to_element_with_offset(canvas, -int(box["width"] * 0.2), 0).click_and_hold()
    for _ in range(6):
        actions.move_by_offset(int(box["width"] * 0.4 / 6), 2)
    actions.release().perform()
    # the red stroke shows on the canvas, as long as the drag: not just the dot of the press
    left, right = page.driver.execute_script(
        """const c = arguments[0], d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let left = c.width, right = -1;
        for (let i = 3; i < d.length; i += 4) if (d[i] > 0) {
          const x = ((i - 3) / 4) % c.width; left = Math.min(left, x); right = Math.max(right, x);
        }
        return [left, right];""",
        canvas,
    )
    brush = int(page.driver.find_element(By.ID, "brush").get_attribute("value") or 0)
    assert right - left > brush + 0.3 * 200, (left, right, brush)

    task_id = submit_form(page)
    el = wait_card_status(page, task_id, "SUCCESS")
    assert el.find_element(By.CSS_SELECTOR, ".type").text == "Object removal"
    assert_result_shown(page, el, (200, 150))
    assert_in_order(card_log(page, task_id))
    assert_no_page_errors(page)


def test_reload_mid_task_resumes_the_same_card(page: Page, new_stack: Stack) -> None:
    base = new_stack.add_api()
    new_stack.add_worker("cpu", threads=1)
    # keep the only worker busy, so the UI's task waits in the queue
    blocker = submit(base, slow_removal(2048))
    wait_status(base, blocker, {"PROCESSING"})

    open_ui(page, base)
    choose_type(page, "background_removal")
    image = write_png(page.tmp_path / "subject.png", two_tone(96, 64))
    upload(page, image)
    wait_uploaded(page, image)
    task_id = submit_form(page)
    el = card(page, task_id)
    wait(page, lambda: el.get_attribute("data-status") == "PENDING", "the task to show as queued")
    assert "position" in el.find_element(By.CSS_SELECTOR, ".position").text

    page.driver.refresh()
    # the page was reloaded while the task was still waiting
    assert httpx.get(f"{base}/api/v1/tasks/{task_id}/status/").json()["status"] in {
        "PENDING",
        "PROCESSING",
    }
    wait_live(page)
    assert len(cards_of(page, task_id)) == 1
    el = wait_card_status(page, task_id, "SUCCESS")
    assert_result_shown(page, el, (96, 64))
    assert len(cards_of(page, task_id)) == 1
    assert card_ids(page) == [task_id]  # no duplicate, and the HTTP task is not ours

    log = card_log(page, task_id)  # since the reload
    assert log[0]["status"] == "UNKNOWN", log
    assert [e["status"] for e in log][-1] == "SUCCESS"
    assert_in_order(log)
    stored = json.loads(page.driver.execute_script("return localStorage.getItem('livepix.tasks')"))
    assert [t["id"] for t in stored] == [task_id]
    wait_status(base, blocker, {"SUCCESS"})
    assert_no_page_errors(page)


def test_cancel_a_queued_task(page: Page, new_stack: Stack) -> None:
    base = new_stack.add_api()  # no worker: the task stays queued until cancelled
    open_ui(page, base)
    choose_type(page, "background_removal")
    image = write_png(page.tmp_path / "subject.png", two_tone(96, 64))
    upload(page, image)
    wait_uploaded(page, image)
    task_id = submit_form(page)
    el = card(page, task_id)
    wait(page, lambda: el.get_attribute("data-status") == "PENDING", "the task to show as queued")
    cancel = el.find_element(By.CSS_SELECTOR, "button.cancel")
    assert cancel.is_displayed() and cancel.text == "Cancel"

    cancel.click()
    el = wait_card_status(page, task_id, "REVOKED")
    assert el.find_element(By.CSS_SELECTOR, ".status").text == "Cancelled"
    assert not cancel.is_displayed()
    assert el.find_element(By.CSS_SELECTOR, "button.remove").is_displayed()
    assert not el.find_element(By.CSS_SELECTOR, "figure.result").is_displayed()
    assert httpx.get(f"{base}/api/v1/tasks/{task_id}/status/").json()["status"] == "REVOKED"
    assert_no_page_errors(page)


def test_bad_uploads_are_explained_in_plain_words(page: Page, stack: Stack) -> None:
    open_ui(page, stack.url)
    choose_type(page, "background_removal")
    errors = page.driver.find_element(By.ID, "form-errors")
    submit_button = page.driver.find_element(By.ID, "submit")

    # no image at all
    submit_button.click()
    wait(page, errors.is_displayed, "the form's errors")
    assert "Please fix the following:" in errors.text
    assert "Image: An image is required" in errors.text

    # a text file renamed .png: the browser takes it, the server refuses it
    fake = page.tmp_path / "holiday.png"
    fake.write_text("these are my holiday notes, not a picture\n")
    upload(page, fake)
    wait_uploaded(page, fake)
    wait(page, lambda: not errors.is_displayed(), "the old errors to be cleared")
    wait(page, lambda: submit_button.is_enabled(), "the Submit button")
    submit_button.click()
    wait(page, errors.is_displayed, "the form's errors")
    assert "Image: Invalid image: the data is not a PNG, JPEG or WebP image" in errors.text
    assert errors.get_attribute("role") == "alert"  # screen readers announce it
    assert submit_button.is_enabled() and submit_button.text == "Submit"

    # a file that is not an image at all is refused before anything is sent
    text = page.tmp_path / "notes.txt"
    text.write_text("hello\n")
    upload(page, text)
    wait(page, lambda: "Use a PNG, JPEG or WebP image" in errors.text, "the file type error")
    assert "{" not in errors.text and "details" not in errors.text  # words, not JSON
    assert card_ids(page) == []  # nothing was submitted
    assert_no_page_errors(page)


def test_the_ui_works_with_api_keys_on(page: Page, new_stack: Stack) -> None:
    new_stack.env["LIVEPIX_API_KEYS"] = "ui-key-0123456789"
    base = new_stack.add_api()
    new_stack.add_worker("cpu")
    page.base_url = base
    page.driver.get(base + "/static/app.css")
    page.driver.execute_script("localStorage.clear(); localStorage.setItem('livepix.apiKey', 'ui-key-0123456789')")
    page.driver.get(base + "/")
    wait_live(page)
    choose_type(page, "background_removal")
    image = write_png(page.tmp_path / "subject.png", two_tone(96, 64))
    upload(page, image)
    wait_uploaded(page, image)
    task_id = submit_form(page)
    el = wait_card_status(page, task_id, "SUCCESS")
    assert_result_shown(page, el, (96, 64))
    # Without the key, the same page gets nowhere with that task.
    assert httpx.get(f"{base}/api/v1/tasks/{task_id}/status/").status_code == 401
