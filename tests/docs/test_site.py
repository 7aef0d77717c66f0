"""The documentation site as a reader sees it: built by MkDocs (strict) and opened in headless
Chromium (Debian's chromium and chromium-driver; skipped, saying so, without them)."""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = shutil.which("chromium")
CHROMEDRIVER = shutil.which("chromedriver")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        CHROMIUM is None or CHROMEDRIVER is None,
        reason="needs Debian's chromium and chromium-driver "
        "(apt-get install chromium chromium-driver)",
    ),
]


class QuietHandler(SimpleHTTPRequestHandler):
    """Serves the built site without a log line per file."""

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The site built from this checkout into a fresh folder, served over HTTP: its URL."""
    folder = tmp_path_factory.mktemp("site")
    subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet", "-d", str(folder)],
        cwd=ROOT,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        check=True,
        timeout=120,
    )
    handler = functools.partial(QuietHandler, directory=str(folder))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Headless Chromium through chromedriver."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1400,1000"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def test_the_home_page_shows_its_title_nav_and_picture(site: str, browser: Any) -> None:
    from selenium.webdriver.common.by import By

    browser.get(f"{site}/")
    assert browser.title.startswith("FCN")
    heading = browser.find_element(By.TAG_NAME, "h1").text
    assert heading == "FCN: Fully Convolutional Networks for semantic segmentation"
    nav = {
        link.get_attribute("textContent").strip()
        for link in browser.find_elements(By.CSS_SELECTOR, "nav.md-nav--primary a.md-nav__link")
    }
    assert {"Getting started", "Settings", "Command line", "Fidelity to the paper"} <= nav
    # The demo's samples come from models/demo/samples (the hook), not a copy under docs/.
    widths = browser.execute_script(
        "return Array.from(document.querySelectorAll('article img'), i => i.naturalWidth)"
    )
    assert len(widths) == 2
    assert all(width > 0 for width in widths), widths


def test_the_settings_reference_shows_the_generated_rows(site: str, browser: Any) -> None:
    from selenium.webdriver.common.by import By

    browser.get(f"{site}/reference/settings/")
    assert browser.find_element(By.TAG_NAME, "h1").text == "Settings reference"
    row = browser.find_element(By.XPATH, "//tr[td[1]/code[text()='FCN_MAX_PIXELS']]")
    cells = [cell.text for cell in row.find_elements(By.TAG_NAME, "td")]
    assert cells[:3] == ["FCN_MAX_PIXELS", "100000000", "integer, >= 1"]
    assert cells[3].startswith("Largest image decoded")
    assert "<!-- generated" not in browser.page_source


def test_the_cli_reference_shows_every_command(site: str, browser: Any) -> None:
    from selenium.webdriver.common.by import By

    from model.cli import COMMANDS

    browser.get(f"{site}/reference/cli/")
    headings = {h.text for h in browser.find_elements(By.CSS_SELECTOR, "article h3, article h2")}
    assert {f"fcn {name}" for name in COMMANDS} | {"fcn-serve"} <= headings
