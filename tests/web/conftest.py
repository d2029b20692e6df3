"""Browser tests: Python playwright driving Debian Chromium (/usr/bin/chromium; never a downloaded browser).
Without Chromium they skip, unless CI is set: then they fail. Screenshots go to test-artifacts/screenshots/."""

import os
import shutil
from pathlib import Path

import pytest

from tests.web.server import SeededCoordinator

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]  # fmt: skip
SCREENSHOTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "screenshots"


def chromium_path() -> str | None:
    for candidate in (os.environ.get("HEARTH_CHROMIUM"), "/usr/bin/chromium", shutil.which("chromium")):
        if candidate and Path(candidate).is_file():
            return candidate
    return None


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() not in ("", "0", "false", "no")


@pytest.fixture(scope="module")
def browser():
    """The system Chromium, headless, driven by playwright's sync API; started and stopped per module so no
    event loop outlives these tests (pytest-playwright's session-wide one breaks later asyncio.run calls)."""
    path = chromium_path()
    if path is None:
        message = "Chromium is not installed (apt-get install chromium, or set HEARTH_CHROMIUM)"
        if _in_ci():
            pytest.fail(f"CI is set but {message}")
        pytest.skip(f"{message}: browser tests skipped")
    from playwright.sync_api import sync_playwright

    playwright = sync_playwright().start()
    try:
        launched = playwright.chromium.launch(executable_path=path, args=CHROMIUM_ARGS, headless=True)
        try:
            yield launched
        finally:
            launched.close()
    finally:
        playwright.stop()


@pytest.fixture
def page(browser):
    """A fresh browser context and page per test (clipboard allowed, for the copy button)."""
    context = browser.new_context(permissions=["clipboard-read", "clipboard-write"])
    try:
        yield context.new_page()
    finally:
        context.close()


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """A seeded coordinator (see test_site.py for what it holds), stopped after the module."""
    server = SeededCoordinator(tmp_path_factory.mktemp("web")).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def watched(page):
    """The page, with every console error, uncaught exception and dialog recorded."""
    page.problems = []
    page.dialogs = []
    page.on("console", lambda m: page.problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
    page.on("pageerror", lambda e: page.problems.append(f"uncaught: {e}"))

    def on_dialog(dialog):
        page.dialogs.append(dialog.message)
        dialog.dismiss()

    page.on("dialog", on_dialog)
    yield page
    assert page.problems == [], page.problems


def screenshot(page, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)
