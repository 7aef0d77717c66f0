"""The page at ``/``: its files as they ship, and the page in a
real headless Chromium (Debian's chromium and chromium-driver) against a real uvicorn.

The browser tests skip when chromium or chromedriver is not installed; CI installs both.
"""

from __future__ import annotations

import fnmatch
import io
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from contract.encode import UNSURE_COLOR
from tests.images import encode, pattern
from tests.service.support import (
    IMAGE,
    PALETTE,
    ROOT,
    TEST_PROVIDER,
    free_port,
    png_labels,
    serve,
    server_environment,
    wait_for_server,
)

STATIC = ROOT / "service" / "static"
EXTERNAL = re.compile(r"https?://", re.IGNORECASE)
CHROMIUM = shutil.which("chromium")
CHROMEDRIVER = shutil.which("chromedriver")
needs_browser = pytest.mark.skipif(
    CHROMIUM is None or CHROMEDRIVER is None,
    reason="needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)",
)
PAGE_FILES = sorted(STATIC.iterdir())


class References(HTMLParser):
    """Every src and href of an HTML document."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.urls += [value for name, value in attrs if name in {"src", "href"} and value]


def references(document: str) -> list[str]:
    """The src and href values of ``document``, less the empty icon that spares a favicon
    request."""
    parser = References()
    parser.feed(document)
    return [url for url in parser.urls if url != "data:,"]


# --- the files, and the routes in process ---------------------------------------------------


@pytest.mark.parametrize("path", PAGE_FILES, ids=lambda p: p.name)
def test_the_page_files_name_no_external_url(path: Path) -> None:
    assert not EXTERNAL.findall(path.read_text()), f"{path.name} names a URL off this service"


def test_the_page_links_only_to_files_it_ships_and_routes_it_has() -> None:
    urls = references((STATIC / "index.html").read_text())
    assets = [u.removeprefix("/static/") for u in urls if u.startswith("/static/")]
    assert {"app.js", "app.css"} <= set(assets)
    assert all((STATIC / asset).is_file() for asset in assets)
    assert all(u.startswith("/") and not u.startswith("//") for u in urls), urls


def test_the_page_paints_unsure_pixels_in_the_services_colour() -> None:
    script = (STATIC / "app.js").read_text()
    found = re.search(r"const UNSURE = \[(\d+), (\d+), (\d+)\];", script)
    assert found is not None
    assert tuple(int(v) for v in found.groups()) == UNSURE_COLOR


def test_the_wheel_ships_the_page() -> None:
    globs = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-data"
    ]["service"]
    shipped = [
        p.name for p in PAGE_FILES if any(fnmatch.fnmatch(f"static/{p.name}", g) for g in globs)
    ]
    assert shipped == [p.name for p in PAGE_FILES]


@pytest.mark.anyio
async def test_the_page_and_its_assets_answer_with_their_types(model_path: Path) -> None:
    async with serve(model_path) as client:
        page = await client.get("/")
        script = await client.get("/static/app.js")
        style = await client.get("/static/app.css")
        missing = await client.get("/static/nope.js")
    assert page.status_code == script.status_code == style.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "<title>FCN semantic segmentation</title>" in page.text
    # The browser itself refuses anything from another origin.
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert script.headers["content-type"].split(";")[0] in {
        "text/javascript",
        "application/javascript",
    }
    assert style.headers["content-type"].startswith("text/css")
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "not_found"


# --- in the browser -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``uvicorn service.main:create_app --factory`` on a free loopback port, once ready."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = server_environment(model_path, warmup_sizes="16x16", intra_op_threads="2")
    log = tmp_path_factory.mktemp("page-server") / "server.log"
    command = [sys.executable, "-m", "uvicorn", "service.main:create_app", "--factory"]
    flags = ["--host", "127.0.0.1", "--port", str(port), "--no-access-log"]
    with log.open("wb") as sink:
        process = subprocess.Popen([*command, *flags], env=env, cwd=ROOT, stdout=sink, stderr=sink)
    try:
        wait_for_server(
            url,
            lambda: None if process.poll() is None else f"the server exited:\n{log.read_text()}",
        )
        yield url
    finally:
        process.kill()
        process.wait(10)


@pytest.fixture(scope="module")
def downloads(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the browser saves what the page offers for download."""
    return tmp_path_factory.mktemp("downloads")


@pytest.fixture(scope="module")
def browser(downloads: Path) -> Iterator[Any]:
    """Headless Chromium through chromedriver, saving downloads into ``downloads``."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1200,1000"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    prefs = {"download.default_directory": str(downloads), "download.prompt_for_download": False}
    options.add_experimental_option("prefs", prefs)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.set_script_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def wait(driver: Any, condition: Any, timeout_s: float = 30) -> Any:
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout_s).until(condition)


def canvas_rgb(driver: Any, canvas: str = "overlay") -> np.ndarray:
    """A canvas' pixels (the overlay's by default), H x W x 3."""
    width, height, data = driver.execute_script(
        "const c = document.getElementById(arguments[0]);"
        "return [c.width, c.height, Array.from(c.getContext('2d')"
        ".getImageData(0, 0, c.width, c.height).data)];",
        canvas,
    )
    return np.asarray(data, dtype=np.uint8).reshape(height, width, 4)[..., :3]


def open_page(driver: Any, url: str, provider: str) -> None:
    from selenium.webdriver.common.by import By

    console_errors(driver)  # forget the previous page's
    driver.get(f"{url}/")
    wait(driver, lambda d: d.find_element(By.ID, "model-provider").text == provider)


def console_errors(driver: Any) -> list[str]:
    return [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]


@pytest.mark.slow
@needs_browser
def test_the_page_segments_an_image_in_a_browser(
    server: str, browser: Any, downloads: Path, tmp_path: Path
) -> None:
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    png = encode(IMAGE, "PNG")
    (tmp_path / "scene.png").write_bytes(png)
    with httpx.Client(base_url=server, timeout=30) as client:
        info = client.get("/v1/model").json()
        expected = client.post("/segment?format=json", files={"image": ("s.png", png)}).json()
        label_png = client.post("/segment", files={"image": ("s.png", png)}).content
        grey = client.post("/segment?format=confidence", files={"image": ("s.png", png)}).content
    labels = png_labels(label_png)
    confidence = np.asarray(Image.open(io.BytesIO(grey)))
    height, width = labels.shape
    colours = np.asarray(PALETTE, dtype=np.float64)[labels]

    where = info["runtime"]
    open_page(browser, server, f"{where['provider']}, {where['precision']}")
    assert info["name"] in browser.find_element(By.ID, "model-name").text
    assert info["arch"] in browser.find_element(By.ID, "model-arch").text
    assert ", ".join(info["classes"]) in browser.find_element(By.ID, "model-classes").text

    browser.find_element(By.ID, "file").send_keys(str(tmp_path / "scene.png"))
    wait(browser, lambda d: d.find_element(By.ID, "result").is_displayed())
    assert browser.find_element(By.ID, "status").text == "Segmented scene.png."
    assert not browser.find_element(By.ID, "error").is_displayed()

    # The original and the overlay, both at the image's own size.
    original = browser.find_element(By.ID, "original")
    wait(browser, lambda d: original.get_property("naturalWidth") > 0)
    assert (original.get_property("naturalWidth"), original.get_property("naturalHeight")) == (
        width,
        height,
    )
    overlay = browser.find_element(By.ID, "overlay")
    assert (overlay.get_property("width"), overlay.get_property("height")) == (width, height)
    # Blended at the slider's 0.5 from the service's labels, pixel for pixel (rounding aside).
    half = np.round(IMAGE * 0.5 + colours * 0.5)
    assert np.abs(canvas_rgb(browser).astype(int) - half).max() <= 1
    # The slider, from the keyboard: all colour.
    browser.find_element(By.ID, "alpha").send_keys(Keys.END)
    assert browser.find_element(By.ID, "alpha-value").text == "1.00"
    assert np.array_equal(canvas_rgb(browser), colours.astype(np.uint8))
    # Beside it, the service's confidence map; the unsure slider paints what is below it.
    assert np.array_equal(canvas_rgb(browser, "confidence")[..., 0], confidence)
    browser.find_element(By.ID, "min-confidence").send_keys(Keys.END)
    assert browser.find_element(By.ID, "min-confidence-value").text == "1.00"
    unsure = confidence < 255
    assert unsure.any()
    painted = canvas_rgb(browser)
    assert (painted[unsure] == UNSURE_COLOR).all()
    assert np.array_equal(painted[~unsure], colours.astype(np.uint8)[~unsure])
    assert browser.find_elements(By.CSS_SELECTOR, "#legend li")[-1].text.startswith("unsure ")
    browser.find_element(By.ID, "min-confidence").send_keys(Keys.HOME)

    # The legend: exactly the classes the service finds, with their fractions.
    items = browser.find_elements(By.CSS_SELECTOR, "#legend li")
    names = [item.find_element(By.CLASS_NAME, "name").text for item in items]
    assert names == [entry["name"] for entry in expected["classes"]]
    for item, entry in zip(items, expected["classes"], strict=True):
        fraction = entry["fraction"]
        shown = "<0.1%" if fraction < 0.001 else f"{fraction * 100:.1f}%"
        assert item.text.endswith(shown)

    # Hovering names the class of the pixel under the pointer (the middle of the overlay).
    ActionChains(browser).move_to_element(overlay).perform()
    hovered = wait(
        browser,
        lambda d: re.fullmatch(
            r"x (\d+), y (\d+): (.+), (\d+)% sure", d.find_element(By.ID, "hover").text
        ),
    )
    x, y, name = int(hovered[1]), int(hovered[2]), hovered[3]
    assert abs(x - width // 2) <= 1
    assert abs(y - height // 2) <= 1
    assert name == info["classes"][labels[y, x]]
    assert int(hovered[4]) == round(100 * int(confidence[y, x]) / 255)

    # The download link saves the label PNG: the same bytes POST /segment answers.
    browser.find_element(By.ID, "download").click()
    saved = downloads / "scene-labels.png"
    wait(browser, lambda d: saved.is_file() and saved.read_bytes() == label_png)

    # Offline: everything the page loaded came from the service itself, and nothing failed.
    loaded = browser.execute_script(
        "return performance.getEntriesByType('resource').map(e => e.name)"
    )
    assert loaded
    assert all(u.startswith(f"{server}/") or u.startswith("blob:") for u in loaded), loaded
    assert console_errors(browser) == []

    screenshot = tmp_path / "page.png"
    assert browser.save_screenshot(str(screenshot))
    assert screenshot.stat().st_size > 0
    print(f"screenshot: {screenshot}")


@pytest.mark.slow
@needs_browser
def test_the_page_shows_the_services_error(server: str, browser: Any, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    broken = encode(pattern(40, 40), "PNG")[:100]  # a truncated PNG
    (tmp_path / "broken.png").write_bytes(broken)
    answer = httpx.post(f"{server}/segment", files={"image": ("broken.png", broken)}, timeout=30)
    message = answer.json()["error"]["message"]
    assert answer.status_code == 400

    open_page(browser, server, f"{TEST_PROVIDER}, fp32")
    browser.find_element(By.ID, "file").send_keys(str(tmp_path / "broken.png"))
    error = browser.find_element(By.ID, "error")
    wait(browser, lambda d: error.is_displayed())
    assert error.text == f"400: {message}"
    assert error.get_attribute("role") == "alert"
    assert not browser.find_element(By.ID, "result").is_displayed()
    # The browser reports the refused request itself; nothing else went wrong.
    assert [m for m in console_errors(browser) if "status of 400" not in m] == []


@pytest.mark.slow
@needs_browser
def test_the_page_shows_an_image_the_browser_cannot_decode(
    server: str, browser: Any, tmp_path: Path
) -> None:
    """Chromium reads no TIFF: the page shows the image as the service decoded it."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    image = pattern(30, 50, seed=2)
    (tmp_path / "scan.tiff").write_bytes(encode(image, "TIFF"))
    open_page(browser, server, f"{TEST_PROVIDER}, fp32")
    browser.find_element(By.ID, "file").send_keys(str(tmp_path / "scan.tiff"))
    wait(browser, lambda d: d.find_element(By.ID, "status").text == "Segmented scan.tiff.")
    original = browser.find_element(By.ID, "original")
    wait(browser, lambda d: original.get_property("naturalWidth") > 0)
    assert (original.get_property("naturalWidth"), original.get_property("naturalHeight")) == (
        50,
        30,
    )
    browser.find_element(By.ID, "alpha").send_keys(Keys.HOME)  # no colour: the image itself
    assert np.array_equal(canvas_rgb(browser), image)
    assert not browser.find_element(By.ID, "error").is_displayed()
