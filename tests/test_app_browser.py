"""The Gradio app in a real browser: Debian's Chromium, driven by Playwright, against the app on 127.0.0.1.

A user adds the two demo teachers, sees a mistyped teacher refused in the page (its toast closes on leaving the
tab), starts a run, watches its progress bar fill, reads the final accuracy, sees every tab and the score on a
390 px wide screen, uploads an image and draws one and reads the student's label, previews the model card, starts
a second run and compares the two in the Runs tab. Screenshots of each
step go to tests/artifacts/ (git-ignored); docs/app.png, in the README, is a copy of ``run-finished.png``.
"""

from __future__ import annotations

import re
import socket
from pathlib import Path

import pytest

from amalgam.app import APP_CSS, RunManager, build_app, sample_image

CHROMIUM = Path("/usr/bin/chromium")
pytestmark = pytest.mark.skipif(not CHROMIUM.exists(),
                                reason="needs Debian's Chromium at /usr/bin/chromium (apt-get install -y chromium)")

ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
# Every value the run's progress bar takes, recorded in the page as it changes.
RECORD_PROGRESS = """
window.progressSeen = [];
new MutationObserver(() => {
  const bar = document.querySelector('#run-progress [role=progressbar]');
  const value = bar && bar.getAttribute('aria-valuenow');
  if (value !== null && window.progressSeen.at(-1) !== value) window.progressSeen.push(value);
}).observe(document.body, {subtree: true, childList: true, attributes: true});
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def app_url(demo_zoo, tmp_path_factory) -> str:
    runs_dir = tmp_path_factory.mktemp("browser-runs")
    manager = RunManager(runs_dir)
    app = build_app(runs_dir, manager)
    app.launch(server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True, quiet=True, css=APP_CSS)
    yield app.local_url
    app.close()
    manager.shutdown()


@pytest.fixture
def page(app_url):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(app_url)
        yield page
        browser.close()


def test_choose_teachers_run_watch_and_try_the_student(page, tmp_path):
    from playwright.sync_api import expect

    ARTIFACTS.mkdir(exist_ok=True)
    page.get_by_label("Hub id or model folder").fill("no-such-org/no-such-model")
    page.get_by_role("button", name="Add teacher", exact=True).click()
    expect(page.get_by_text("Error: Hub repo 'no-such-org/no-such-model'")).to_be_visible(timeout=30_000)
    toast_close = page.get_by_test_id("toast-close")  # the same message as a Gradio warning toast
    expect(toast_close).to_be_visible()
    page.screenshot(path=ARTIFACTS / "teacher-refused.png")
    page.get_by_role("tab", name="5 · Runs").click()  # the toast does not follow the user to another tab
    expect(toast_close).to_have_count(0)
    page.get_by_role("tab", name="1 · Setup").click()

    page.get_by_role("button", name="Add the two demo teachers (digits)").click()
    expect(page.get_by_text("Union label space: 10 classes")).to_be_visible(timeout=60_000)
    teachers = page.get_by_role("grid", name="chosen teachers")
    expect(teachers).to_contain_text("cnn-digits-0to4")
    expect(teachers).to_contain_text("grey 32x32")
    expect(teachers).to_contain_text("vit-digits-5to9")
    expect(teachers).to_contain_text("ViTForImageClassification")
    page.get_by_label("epochs").fill("2")
    page.get_by_label("learning rate").fill("0.01")
    page.screenshot(path=ARTIFACTS / "teachers-chosen.png", full_page=True)

    page.evaluate(RECORD_PROGRESS)
    page.get_by_role("button", name="Start the run").click()
    expect(page.get_by_role("tab", name="2 · Run")).to_have_attribute("aria-selected", "true")
    page.screenshot(path=ARTIFACTS / "run-started.png")
    finished = page.get_by_text(re.compile(r"finished · student accuracy \d\.\d{4}"))
    expect(finished).to_be_visible(timeout=180_000)
    accuracy = float(re.search(r"accuracy (\d\.\d{4})", finished.inner_text()).group(1))
    assert accuracy > 0.5  # chance is 0.1
    seen = page.evaluate("window.progressSeen")
    assert seen[-1] == "100" and int(seen[0]) < 100, seen  # the bar was shown before the run ended
    expect(page.get_by_text("teacher oracle (reference)")).to_be_visible()  # the results table
    expect(page.get_by_role("button", name="Cancel run")).to_be_disabled()  # nothing to cancel on a finished run
    expect(page.get_by_role("grid", name="per-class accuracy")).to_contain_text("vit-digits-5to9")
    page.screenshot(path=ARTIFACTS / "run-finished.png", full_page=True)
    page.set_viewport_size({"width": 390, "height": 844})  # a phone: every tab in the bar, the score on screen
    for name in ("1 · Setup", "2 · Run", "3 · Try", "4 · Publish", "5 · Runs"):
        expect(page.get_by_role("tab", name=name)).to_be_visible()
    page.screenshot(path=ARTIFACTS / "narrow-run-finished.png", full_page=True)
    score = page.locator("#results-table").get_by_role("columnheader", name="accuracy")
    assert score.bounding_box()["x"] + score.bounding_box()["width"] <= 390
    page.set_viewport_size({"width": 1280, "height": 900})

    page.get_by_role("tab", name="3 · Try").click()
    image, _ = sample_image("digits", index=3)
    image.save(tmp_path / "digit.png")
    page.locator("#try-image input[type=file]").set_input_files(tmp_path / "digit.png")
    said = page.get_by_text(re.compile(r"The student says \d"))
    expect(said).to_be_visible(timeout=60_000)
    answers = page.get_by_role("grid", name="student and teachers")
    expect(answers).to_contain_text("teacher cnn-digits-0to4")
    expect(answers).to_contain_text("teacher vit-digits-5to9")
    page.screenshot(path=ARTIFACTS / "student-tried.png", full_page=True)

    page.get_by_text("... or draw one").click()  # a "1" drawn with the mouse
    page.locator("#try-sketch").get_by_role("button", name="Brush").first.click()
    canvas = page.locator("#try-sketch canvas").first
    expect(canvas).to_be_visible()
    box = canvas.bounding_box()
    x, top = box["x"] + box["width"] / 2, box["y"] + box["height"] * 0.2
    page.mouse.move(x, top)
    page.mouse.down()
    for step in range(1, 11):
        page.mouse.move(x, top + step * box["height"] * 0.06)
    page.mouse.up()
    page.get_by_role("button", name="Classify the drawing").click()
    # the image box now shows the drawing as the models saw it: square, cropped around the stroke, not the 8x8 upload
    page.wait_for_function("() => { const img = document.querySelector('#try-image img'); return img && "
                           "img.naturalWidth > 8 && img.naturalWidth === img.naturalHeight; }", timeout=60_000)
    expect(page.get_by_text("draw something")).to_have_count(0)
    expect(said).to_be_visible(timeout=60_000)
    page.screenshot(path=ARTIFACTS / "student-drawn.png", full_page=True)

    page.get_by_role("tab", name="4 · Publish").click()
    page.get_by_label("model repo id").fill("my-org/digits-student")
    page.get_by_role("button", name="Preview the model card").click()
    expect(page.locator("#card-preview")).to_contain_text("my-org/digits-student", timeout=30_000)
    page.screenshot(path=ARTIFACTS / "publish-preview.png", full_page=True)

    page.reload()  # the browser kept the setup: the teachers and the budget come back
    expect(page.get_by_role("grid", name="chosen teachers")).to_contain_text("cnn-digits-0to4", timeout=60_000)
    expect(page.get_by_label("epochs")).to_have_value("2")
    expect(page.get_by_label("learning rate")).to_have_value("0.01")
    page.get_by_label("epochs").fill("3")  # a second run, one epoch longer, to compare with the first
    page.get_by_role("button", name="Start the run").click()
    expect(page.get_by_role("tab", name="2 · Run")).to_have_attribute("aria-selected", "true")
    runs = page.get_by_role("grid", name="every run")
    for _ in range(90):  # the Runs tab lists the runs from disk each time it opens: until both are finished
        page.get_by_role("tab", name="5 · Runs").click()
        page.wait_for_timeout(2000)
        if runs.get_by_role("gridcell", name="finished", exact=True).count() == 2:
            break
        page.get_by_role("tab", name="2 · Run").click()
    expect(runs.get_by_role("row")).to_have_count(3)  # the header and two runs
    expect(runs.get_by_role("gridcell", name="finished", exact=True)).to_have_count(2)
    page.screenshot(path=ARTIFACTS / "runs.png", full_page=True)
    chooser = page.get_by_label("runs to compare (two or more)")
    for index in range(2):  # the chosen ones stay in the list, marked
        chooser.click()
        page.get_by_role("option").nth(index).click()
    page.get_by_role("button", name="Compare", exact=True).click()
    expect(page.get_by_role("grid", name="the compared runs").get_by_role("row")).to_have_count(3, timeout=30_000)
    expect(page.locator("#compare-plot img")).to_be_visible(timeout=30_000)  # the figure, not its placeholder
    page.wait_for_timeout(1500)  # Gradio fades the outputs until the event has settled
    page.screenshot(path=ARTIFACTS / "runs-compared.png", full_page=True)
    page.set_viewport_size({"width": 390, "height": 844})
    page.screenshot(path=ARTIFACTS / "narrow-runs.png", full_page=True)
