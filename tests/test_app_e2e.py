"""End-to-end: the web app in headless Chromium, from choosing a task to a finished QC report.

Debian's ``chromium`` is driven by Playwright. The walk trains Noise2Void (tiny network,
2 epochs) on the shipped demo images, checks its quality, applies it, exports it as a
BioImage.IO package, and visits the runs page. A screenshot of each step is saved under
the test's tmp folder, or into ``$DEEPSCOPE_SCREENSHOTS`` when set
(``scripts/app_screenshots.py`` uses that for the README). Skipped when Chromium or
Playwright is missing (``scripts/test.sh`` installs it).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import threading
import time
from pathlib import Path

import pytest

from conftest import folder_digest

CHROMIUM = os.environ.get("DEEPSCOPE_CHROMIUM", "/usr/bin/chromium")
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TINY = {
    "data-patch_size": "32 32",
    "model-depth": "1",
    "model-base_channels": "4",
    "training-epochs": "2",
    "training-patches_per_epoch": "16",
    "training-batch_size": "8",
    "training-val_patches": "8",
    "training-checkpoint_every": "2",
}

# scripts/app_screenshots.py trains a larger network for the README pictures.
TINY.update(json.loads(os.environ.get("DEEPSCOPE_E2E_SETTINGS", "{}")))
WAIT_MS = int(float(os.environ.get("DEEPSCOPE_E2E_TIMEOUT_S", "120")) * 1000)

pytestmark = pytest.mark.skipif(
    not Path(CHROMIUM).exists() and not os.environ.get("DEEPSCOPE_REQUIRE_BROWSER"),
    reason=f"no Chromium at {CHROMIUM} (scripts/test.sh installs it)",
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def server(tmp_path: Path):
    """The app on a free loopback port, over a copy of the demo images."""
    import uvicorn

    from deepscope.app.security import LOOPBACK
    from deepscope.app.server import create_app
    from deepscope.demo import demo_data_dir

    data = tmp_path / "data"
    shutil.copytree(demo_data_dir(), data, ignore=shutil.ignore_patterns("*.txt"))
    app = create_app([data], tmp_path / "runs", allowed_hosts=LOOPBACK)
    port = _free_port()
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    for _ in range(100):
        if srv.started:
            break
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}", data, tmp_path / "runs"
    srv.should_exit = True
    thread.join(timeout=5)


def _lap(times: dict[str, float], name: str) -> None:
    """Record the seconds since the walk began (printed with -s, to see what is slow)."""
    times[name] = round(time.monotonic() - times["_t0"], 1)


def _pick(page, testid: str, *names: str) -> None:
    """Walk the folder picker ``testid`` into ``names`` and use that folder."""
    box = page.get_by_test_id(testid)
    for name in names:
        box.locator(f"li[data-name='{name}']").click()
        box.get_by_text("Looking in ").filter(has_text=name).wait_for()
    box.get_by_test_id(f"{testid}-use").click()


def test_n2v_from_data_to_qc_report_in_chromium(server, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    url, data, runs = server
    shots = Path(os.environ.get("DEEPSCOPE_SCREENSHOTS") or tmp_path / "screenshots")
    shots.mkdir(parents=True, exist_ok=True)
    before = folder_digest(data)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        times: dict[str, float] = {"_t0": time.monotonic()}
        page.goto(url + "/")

        # 1 task
        page.get_by_test_id("task-n2v").wait_for()
        page.screenshot(path=shots / "1-task.png", full_page=True)
        page.get_by_test_id("task-n2v").click()

        _lap(times, "task")
        # 2 data: browse into the data root, use noisy/, check it
        _pick(page, "pick-images", str(data), "noisy")
        expect(page.get_by_test_id("pick-images-chosen")).to_have_text(str(data / "noisy"))
        page.get_by_test_id("check-data").click()
        expect(page.get_by_test_id("findings")).to_contain_text("4 images ready for training")
        expect(page.get_by_test_id("thumbs").locator("img")).to_have_count(4)
        page.wait_for_function(
            "[...document.querySelectorAll('[data-testid=thumbs] img')].every(i => i.complete"
            " && i.naturalWidth > 0)"
        )
        page.screenshot(path=shots / "2-data.png", full_page=True)
        page.get_by_test_id("to-settings").click()

        _lap(times, "data")
        # 3 settings: a tiny network so the walk takes seconds
        page.locator("#f-training-epochs").wait_for()
        for details in page.locator("details[data-testid^=advanced]").all():
            details.locator("summary").click()
        for field, value in TINY.items():
            page.locator(f"#f-{field}").fill(value)
        page.locator("#f-training-precision").select_option('"32"')
        page.locator("#run-name").fill("walk")
        page.evaluate("window.scrollTo(0, 0)")
        page.screenshot(path=shots / "3-settings.png", full_page=False)
        page.get_by_test_id("start-training").click()

        _lap(times, "settings")
        # 4 train: live view until the model is ready
        page.wait_for_url("**/#/run/walk")
        expect(page.get_by_test_id("run-status")).to_have_text("trained", timeout=WAIT_MS)
        expect(page.get_by_test_id("preview")).to_be_visible()
        expect(page.get_by_test_id("train-progress")).to_contain_text(
            "{0} of {0} epochs".format(TINY["training-epochs"])
        )
        page.locator("#train").screenshot(path=shots / "4-train.png")

        _lap(times, "train")
        # 5 quality control on the held-out pairs
        _pick(page, "pick-qc-images", str(data), "qc_noisy")
        _pick(page, "pick-qc-targets", str(data), "qc_clean")
        page.get_by_test_id("run-qc").click()
        report = page.get_by_test_id("qc-report")
        expect(report).to_be_visible(timeout=WAIT_MS)
        frame = page.frame_locator("[data-testid=qc-report]")
        expect(frame.locator("body")).to_contain_text("PSNR", timeout=20_000)
        page.locator("#qc").screenshot(path=shots / "5-qc.png")
        assert (runs / "walk" / "qc" / "report.html").is_file()

        _lap(times, "qc")
        # 6 apply to the held-out images; results shown beside their inputs
        _pick(page, "pick-apply", str(data), "qc_noisy")
        page.get_by_test_id("pick-apply").scroll_into_view_if_needed()
        page.get_by_test_id("run-apply").click()
        expect(page.get_by_test_id("results").locator("img")).to_have_count(4, timeout=WAIT_MS)
        page.locator("#apply").screenshot(path=shots / "6-apply.png")

        _lap(times, "apply")
        # 7 share: a BioImage.IO package, checked by bioimageio.core, offered for download
        page.get_by_test_id("export-authors").fill("Ada Lovelace")
        page.get_by_test_id("run-export").click()
        expect(page.get_by_test_id("export-file")).to_have_text(
            "walk-bioimageio.zip", timeout=WAIT_MS
        )
        expect(page.get_by_test_id("export-progress")).to_contain_text("written")
        page.locator("#share").screenshot(path=shots / "7-share.png")
        assert (runs / "walk" / "export" / "walk-bioimageio.zip").is_file()

        _lap(times, "share")
        # runs page
        page.goto(url + "/#/runs")
        expect(page.get_by_test_id("run-walk")).to_contain_text("PSNR (QC)")
        page.screenshot(path=shots / "8-runs.png", full_page=True)

        # compare (a run with itself: the page's curves, metrics and settings table)
        page.goto(url + "/#/compare/walk/walk")
        expect(page.get_by_test_id("compare-table")).to_contain_text("PSNR (QC)")
        expect(page.locator("main")).to_contain_text("The two runs used the same settings.")

        # delete, after typing the run's name
        page.goto(url + "/#/runs")
        page.get_by_test_id("delete-walk").click()
        page.get_by_test_id("confirm-walk").fill("walk")
        page.get_by_test_id("really-delete-walk").click()
        expect(page.locator("main")).to_contain_text("No runs yet")
        assert not (runs / "walk").exists()
        _lap(times, "runs")
        print("seconds since the walk began:", {k: v for k, v in times.items() if k != "_t0"})
        assert not errors, errors
        browser.close()
    assert folder_digest(data) == before, "the data folder was changed"
