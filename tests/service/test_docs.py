"""``/docs``: Swagger UI on the service's own OpenAPI document, served offline under the page's
Content-Security-Policy, and "Try it out" on ``POST /segment`` in a real headless Chromium.

The browser tests reuse test_page.py's Chromium, chromedriver and uvicorn fixtures, and skip
as they do where Chromium is not installed.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from service.page import SWAGGER_UI, SWAGGER_UI_URL
from tests.images import encode
from tests.service import test_page
from tests.service.support import IMAGE, launch, serve
from tests.service.test_page import EXTERNAL, console_errors, needs_browser, references, wait
from tests.service.test_routes import noted_copy

# The page tests' headless Chromium.
browser = test_page.browser
downloads = test_page.downloads
NOTE = "synthetic shapes only; for photos serve voc-fcn8s"


@pytest.fixture(scope="module")
def server(model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``fcn-serve`` on the tiny model, given a note as `fcn export --note` writes it."""
    folder = tmp_path_factory.mktemp("docs-server")
    served = launch(
        noted_copy(model_path, folder, NOTE),
        folder / "server.log",
        warmup_sizes="16x16",
        intra_op_threads="2",
        access_log="false",
    )
    yield served.url
    served.stop()


# Swagger UI 5 is the first to read OpenAPI 3.1, the version FastAPI writes.
SWAGGER_VERSION = re.compile(r'PACKAGE_VERSION:"(\d+)\.(\d+)\.(\d+)"')


@pytest.mark.anyio
async def test_docs_is_swagger_ui_from_the_service_itself(model_path: Path) -> None:
    async with serve(model_path) as client:
        docs = await client.get("/docs")
        assets = {url: await client.get(url) for url in references(docs.text)}
        redoc = await client.get("/redoc")
        openapi = (await client.get("/openapi.json")).json()
    assert docs.status_code == 200
    assert docs.headers["content-type"].startswith("text/html")
    # Scripts from this origin only: no inline script, nothing from elsewhere.
    policy = docs.headers["content-security-policy"]
    assert "default-src 'self'" in policy
    assert "unsafe-inline" not in policy
    assert "<script>" not in docs.text
    assert not EXTERNAL.findall(docs.text)
    assert set(assets) == {
        f"{SWAGGER_UI_URL}/swagger-ui.css",
        f"{SWAGGER_UI_URL}/swagger-ui-bundle.js",
        "/static/docs.js",
    }
    assert all(response.status_code == 200 for response in assets.values())
    bundle = assets[f"{SWAGGER_UI_URL}/swagger-ui-bundle.js"].text
    found = SWAGGER_VERSION.search(bundle)
    assert found is not None
    assert int(found[1]) >= 5, f"Swagger UI {found[0]} cannot read OpenAPI {openapi['openapi']}"
    assert openapi["openapi"].startswith("3.1")
    assert "SwaggerUIBundle" in assets["/static/docs.js"].text
    assert (SWAGGER_UI / "swagger-ui-bundle.js").is_file()
    # The page and the reference are not API routes themselves; ReDoc is not served.
    assert not {"/", "/docs"} & set(openapi["paths"])
    assert redoc.status_code == 404


@pytest.mark.slow
@needs_browser
def test_try_it_out_segments_an_upload_in_swagger_ui_offline(
    server: str, browser: Any, tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By

    (tmp_path / "scene.png").write_bytes(encode(IMAGE, "PNG"))
    console_errors(browser)  # forget the previous page's
    browser.get(f"{server}/docs")
    block = wait(
        browser, lambda d: d.find_element(By.ID, "operations-default-segment_segment_post")
    )
    block.find_element(By.CLASS_NAME, "opblock-summary").click()
    wait(browser, lambda d: block.find_element(By.CLASS_NAME, "try-out__btn")).click()
    upload = wait(browser, lambda d: block.find_element(By.CSS_SELECTOR, "input[type=file]"))
    upload.send_keys(str(tmp_path / "scene.png"))
    block.find_element(By.CSS_SELECTOR, "button.execute").click()
    status = wait(
        browser,
        lambda d: block.find_element(
            By.CSS_SELECTOR, ".live-responses-table tr.response td.response-col_status"
        ),
    )
    assert status.text.split()[0] == "200"
    # The label map came back as a PNG, shown by Swagger UI.
    assert "image/png" in block.find_element(By.CSS_SELECTOR, ".live-responses-table").text
    # Offline: everything the reference loaded came from the service, and nothing failed.
    loaded = browser.execute_script(
        "return performance.getEntriesByType('resource').map(e => e.name)"
    )
    assert all(u.startswith(f"{server}/") or u.startswith("blob:") for u in loaded), loaded
    assert f"{server}/openapi.json" in loaded
    assert console_errors(browser) == []
    screenshot = tmp_path / "docs.png"
    assert browser.save_screenshot(str(screenshot))
    print(f"screenshot: {screenshot}")


@pytest.mark.slow
@needs_browser
def test_the_page_shows_the_models_note(server: str, browser: Any) -> None:
    from selenium.webdriver.common.by import By

    browser.get(f"{server}/")
    note = browser.find_element(By.ID, "model-note")
    wait(browser, lambda d: note.is_displayed())
    assert note.text == f"Note: {NOTE}"
