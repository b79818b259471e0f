"""The labelling page in a real headless browser (Chromium from the system's packages,
driven by Playwright), as a person uses it: label a batch of a generated image folder
with keys and clicks, undo one, train and query, and see the next batch. Screenshots of
each state go to $JAXAL_TEST_ARTEFACTS, else the test's tmp dir. Skips, with the reason,
where no browser can start; tests/test_label_server.py covers the same over HTTP."""

import csv
import json
import os
import shutil
from pathlib import Path

import pytest

pytest.importorskip("starlette", reason="the ui extra (pip install -e '.[ui]') is missing")
pytest.importorskip("uvicorn", reason="the ui extra (pip install -e '.[ui]') is missing")
sync_api = pytest.importorskip("playwright.sync_api",
                               reason="playwright is missing (the dev extra)")

from labelling_session import folder_config, make_photos  # noqa: E402

from jaxal.apps.label_files import read_labels  # noqa: E402
from jaxal.apps.label_server import served_in_thread  # noqa: E402
from jaxal.apps.labelling import propose  # noqa: E402

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def chromium_path() -> str | None:
    return os.environ.get("JAXAL_CHROMIUM") or next(
        (path for name in BROWSERS if (path := shutil.which(name))), None)


@pytest.fixture(scope="module")
def browser():
    path = chromium_path()
    if path is None:
        pytest.skip(f"no Chromium on PATH ({', '.join(BROWSERS)}); apt-get install "
                    "chromium, or set JAXAL_CHROMIUM")
    with sync_api.sync_playwright() as p:
        try:
            browser = p.chromium.launch(executable_path=path,
                                        args=["--no-sandbox", "--disable-gpu"])
        except Exception as e:     # the browser is there but cannot start here
            pytest.skip(f"{path} does not start: {str(e).splitlines()[0]}")
        yield browser
        browser.close()


@pytest.fixture
def artefacts(tmp_path) -> Path:
    root = os.environ.get("JAXAL_TEST_ARTEFACTS")
    path = Path(root) / "label_browser" if root else tmp_path / "artefacts"
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture
def served(tmp_path):
    """The page of a folder session (random first batch pending) on a free port, served
    by uvicorn in a thread."""
    photos = make_photos(tmp_path / "photos", n=16, size=(40, 30))
    session = tmp_path / "session"
    config = folder_config(photos, session)
    propose(session, config)
    with served_in_thread(session, config, "browser-token") as (base, server):
        yield f"{base}/?token=browser-token", session, server


@pytest.mark.slow
def test_a_person_labels_a_batch_undoes_one_and_trains(browser, served, artefacts):
    url, session, _ = served
    expect = sync_api.expect
    page = browser.new_page(viewport={"width": 1100, "height": 800})
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(url)
    page.wait_for_selector("#classes button:not([disabled])")
    progress = page.locator("#progress")
    assert progress.inner_text().startswith("round 1: image 1 of 3, 0 labelled")
    page.screenshot(path=artefacts / "1-first-image.png")
    batch = json.loads((session / "pending.json").read_text())["files"]
    assert page.locator("#caption").inner_text().startswith(batch[0])
    # 1: a digit key; the label is in labels.csv when the page moves on.
    page.keyboard.press("1")
    expect(progress).to_contain_text("image 2 of 3")
    assert rows(session) == [[batch[0], "0"]]
    # A click, then Backspace undoes it: the same image is asked again.
    page.get_by_role("button", name="dog").click()
    expect(progress).to_contain_text("image 3 of 3")
    assert rows(session) == [[batch[0], "0"], [batch[1], "1"]]
    page.screenshot(path=artefacts / "2-after-two-labels.png")
    page.keyboard.press("Backspace")
    expect(progress).to_contain_text("image 2 of 3")
    assert rows(session) == [[batch[0], "0"]]
    assert page.locator("#caption").inner_text().startswith(batch[1])
    page.screenshot(path=artefacts / "3-after-undo.png")
    # A class's first letter (c: cat, d: dog).
    page.keyboard.press("c")
    expect(progress).to_contain_text("image 3 of 3")
    page.keyboard.press("d")
    page.wait_for_selector("#train", state="visible")
    assert rows(session) == [[batch[0], "0"], [batch[1], "0"], [batch[2], "1"]]
    assert not (session / "pending.json").exists()
    assert "Batch of round 1 done: 3 labelled" in page.locator("#done-text").inner_text()
    page.screenshot(path=artefacts / "4-batch-done.png")
    page.keyboard.press("Enter")                     # train and query
    page.wait_for_selector("#training", state="visible")
    page.screenshot(path=artefacts / "5-training.png")
    expect(progress).to_contain_text("round 2: image 1 of 3", timeout=120_000)
    pending = json.loads((session / "pending.json").read_text())
    assert pending["round"] == 2 and not set(pending["files"]) & set(batch)
    assert page.locator("#caption").inner_text().startswith(pending["files"][0])
    assert page.locator("#model li").count() == 2           # the model's classes
    assert page.locator("#top img").count() == 5            # the round's extremes
    assert page.locator("#curve circle").count() == 1       # the curve so far
    assert "3 labels so far" in progress.inner_text()
    page.screenshot(path=artefacts / "6-next-batch.png", full_page=True)
    assert read_labels(session) and errors == []
    assert sorted(p.name for p in artefacts.glob("*.png")) == [
        "1-first-image.png", "2-after-two-labels.png", "3-after-undo.png",
        "4-batch-done.png", "5-training.png", "6-next-batch.png"]


def rows(session):
    with open(session / "labels.csv", newline="") as f:
        return [row[:2] for row in list(csv.reader(f))[1:]]
