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


@pytest.fixture(scope="session")
def browser_type_launch_args():
    """pytest-playwright's launch options: the system Chromium, headless."""
    path = chromium_path()
    if path is None:
        message = "Chromium is not installed (apt-get install chromium, or set HEARTH_CHROMIUM)"
        if _in_ci():
            pytest.fail(f"CI is set but {message}")
        pytest.skip(f"{message}: browser tests skipped")
    return {"executable_path": path, "args": CHROMIUM_ARGS, "headless": True}


@pytest.fixture(scope="session")
def browser_name():
    return "chromium"  # never firefox/webkit: they are not installed and the launch hangs


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
