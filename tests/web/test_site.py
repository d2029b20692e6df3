"""The website in a real browser (Chromium through playwright) against a real coordinator app on uvicorn with a
real SQLite ledger seeded through the Ledger API: 30 volunteers with distinct credit in two teams, one named
like an XSS attack, reports over 20 epochs with a falling loss."""

import re

import pytest
from playwright.sync_api import expect

from coordinator.web import _number
from protocol.credit import credit_for
from tests.coordinator.helpers import FLOPS
from tests.web.conftest import screenshot

XSS = "<script>alert(1)</script>"
NAMES = [f"vol-{i:02d}" for i in range(1, 31)]
LIVE_TIMEOUT_MS = 20_000  # pages poll every 5 s


def samples_of(name: str) -> int:
    return 500 if name == XSS else (31 - int(name[4:])) * 1000


@pytest.fixture(scope="module")
def seeded(site):
    for i, name in enumerate(NAMES, start=1):
        site.register(name, team="Red Team" if i % 2 else "Blue Team")
    site.register(XSS)
    for i, name in enumerate(NAMES + [XSS], start=1):
        epoch = (i - 1) % 20 + 1
        # vol-01 earned the most, but a month ago: its recent average credit has decayed below others'
        site.report(name, samples_of(name), epoch=epoch, loss=2.0 / epoch, days_ago=30 if name == "vol-01" else 0)
    return site


def column(page, table: str, index: int) -> list[str]:
    return [text.strip() for text in page.locator(f"{table} tbody tr td:nth-child({index})").all_inner_texts()]


def numbers(texts: list[str]) -> list[float]:
    return [float(t.replace(",", "")) for t in texts]


PAGES = {
    "leaderboard": "/", "teams": "/?view=teams", "volunteer": "/volunteers/vol-01", "team": "/teams/Red%20Team",
    "swarms": "/swarms", "swarm": "/swarms/spirals", "join": "/join",
}  # fmt: skip


def test_every_page_renders_without_console_errors(seeded, watched):
    for name, path in PAGES.items():
        response = watched.goto(seeded.url + path)
        assert response.status == 200, path
        expect(watched.locator("h1")).to_be_visible()
        expect(watched.locator("nav.main")).to_be_visible()
        screenshot(watched, name)
    assert watched.problems == []
    assert watched.goto(seeded.url + "/volunteers/nobody").status == 404
    expect(watched.locator("h1")).to_have_text("Not found")
    assert all("404" in problem for problem in watched.problems)  # Chromium logs the 404 status itself
    watched.problems.clear()


def test_leaderboard_shows_seeded_ranks_and_values_in_order(seeded, watched):
    watched.goto(seeded.url + "/")
    expected = NAMES + [XSS]
    assert column(watched, "#leaderboard", 1) == [str(rank) for rank in range(1, 32)]
    assert column(watched, "#leaderboard", 2) == expected
    assert column(watched, "#leaderboard", 4) == [_number(credit_for(samples_of(n), FLOPS)) for n in expected]
    assert column(watched, "#leaderboard", 6) == [f"{samples_of(n):,}" for n in expected]
    assert column(watched, "#leaderboard", 3)[:2] == ["Red Team", "Blue Team"]

    watched.get_by_role("link", name="Teams", exact=True).click()
    expect(watched).to_have_url(re.compile(r"view=teams"))
    assert column(watched, "#teams", 2) == ["Red Team", "Blue Team"]  # vol-01, 03, … hold the larger shares
    assert column(watched, "#teams", 3) == ["15", "15"]


def test_sorting_and_paging(seeded, watched):
    watched.goto(seeded.url + "/")
    watched.get_by_role("link", name="Recent average credit").click()
    expect(watched).to_have_url(re.compile(r"sort=rac"))
    rac = numbers(column(watched, "#leaderboard", 5))
    assert rac == sorted(rac, reverse=True) and len(rac) == 31
    names = column(watched, "#leaderboard", 2)
    assert names[0] == "vol-02" and names.index("vol-01") > 20  # a month idle: RAC fell below 2^(-30/7)
    expect(watched.locator('th[aria-sort="descending"]')).to_have_text("RAC")

    watched.goto(seeded.url + "/?size=25")
    assert column(watched, "#leaderboard", 1) == [str(rank) for rank in range(1, 26)]
    watched.get_by_role("link", name="Next").click()
    expect(watched).to_have_url(re.compile(r"page=2"))
    assert column(watched, "#leaderboard", 1) == [str(rank) for rank in range(26, 32)]
    assert column(watched, "#leaderboard", 2) == NAMES[25:] + [XSS]
    expect(watched.locator(".pager [aria-current]")).to_have_text("Page 2 of 2")

    watched.get_by_label("Find a volunteer").fill("vol-1")
    watched.get_by_label("Find a volunteer").press("Enter")
    expect(watched).to_have_url(re.compile(r"q=vol-1"))
    expect(watched.locator("#leaderboard caption")).to_contain_text("whose name starts with")
    assert column(watched, "#leaderboard", 2) == [f"vol-{i}" for i in range(10, 20)]
    assert column(watched, "#leaderboard", 1) == [str(rank) for rank in range(10, 20)]


def test_script_in_a_name_is_shown_as_text(seeded, watched):
    watched.goto(seeded.url + "/?page=1")
    cell = watched.locator("#leaderboard tbody tr").last.locator("td").nth(1)
    expect(cell).to_have_text(XSS)
    cell.get_by_role("link").click()
    expect(watched.locator("h1")).to_have_text(XSS)
    assert watched.dialogs == []
    assert watched.evaluate("document.querySelectorAll('main script:not([type=\"application/json\"])').length") == 0


def test_volunteer_page_shows_totals_chart_nodes_and_audit(seeded, watched):
    watched.goto(seeded.url + "/volunteers/vol-02")
    expect(watched.locator(".cards")).to_contain_text("Rank by credit")
    expect(watched.locator(".cards dd").first).to_have_text("2")
    expect(watched.locator("#audit tbody tr")).to_have_count(1)
    expect(watched.locator("#audit")).to_contain_text("granted (rule flops-v1)")
    assert painted_pixels(watched, "credit-data") > 200


def painted_pixels(page, chart: str) -> int:
    page.wait_for_selector(f'[data-chart="{chart}"] canvas')
    return page.evaluate(
        """(chart) => {
            const canvas = document.querySelector(`[data-chart="${chart}"] canvas`);
            const data = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
            let painted = 0;
            for (let i = 3; i < data.length; i += 4) if (data[i] > 0) painted++;
            return painted;
        }""",
        chart,
    )


def test_swarm_chart_draws_and_a_new_report_appears_without_reload(seeded, watched):
    watched.goto(seeded.url + "/swarms/spirals")
    assert painted_pixels(watched, "loss-data") > 500
    assert watched.evaluate("JSON.parse(document.getElementById('loss-data').textContent).length") == 20
    watched.evaluate("window.stillTheSamePage = true")

    seeded.report("vol-07", 4321, epoch=21, loss=0.05)
    expect(watched.locator("#recent-reports tbody tr").first).to_contain_text("4,321", timeout=LIVE_TIMEOUT_MS)
    expect(watched.locator("#rounds tbody tr").first.locator("td").first).to_have_text("21")
    assert watched.evaluate("JSON.parse(document.getElementById('loss-data').textContent).length") == 21
    assert watched.evaluate("window.stillTheSamePage") is True
    assert painted_pixels(watched, "loss-data") > 500
    screenshot(watched, "swarm-live")


def test_join_command_matches_the_coordinator_url(seeded, watched):
    watched.goto(seeded.url + "/join")
    expect(watched.locator("#join-command")).to_have_text(f"hearth join {seeded.url}")
    watched.get_by_role("button", name="Copy command").click()
    expect(watched.locator("#copy-status")).to_have_text("Copied.")
    assert watched.evaluate("navigator.clipboard.readText()") == f"hearth join {seeded.url}"


def test_keyboard_phone_and_dark_mode(seeded, watched):
    watched.set_viewport_size({"width": 390, "height": 844})
    watched.goto(seeded.url + "/")
    watched.keyboard.press("Tab")
    expect(watched.locator(":focus")).to_have_text("Skip to content")
    watched.keyboard.press("Enter")
    expect(watched.locator(":focus")).to_have_id("content")
    assert watched.evaluate("document.documentElement.scrollWidth <= window.innerWidth")  # no sideways scrolling
    screenshot(watched, "leaderboard-phone")
    watched.emulate_media(color_scheme="dark")
    background = watched.evaluate("getComputedStyle(document.body).backgroundColor")
    assert background == "rgb(22, 24, 27)"
    screenshot(watched, "leaderboard-dark")
