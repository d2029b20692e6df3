"""`hearth leaderboard` against a real uvicorn: pages, names shown as typed, API errors as one line."""

from protocol.signing import SigningKey
from tests.conftest import run_hearth
from tests.coordinator.helpers import registration
from tests.coordinator.live_server import live_server

MARKUP = "[bold red]loud[/]"  # rich markup in a name must be printed, not interpreted
BROKEN_MARKUP = "[/oops]"  # and must not crash the table


def test_leaderboard_pages_and_shows_names_as_typed(tmp_path):
    with live_server(tmp_path, rate_limit=1000.0) as client:
        for name in ("alice", MARKUP, BROKEN_MARKUP):
            assert client.post("/api/v1/volunteers", content=registration(SigningKey.generate(), name)).status_code == 201
        url = str(client.base_url)

        first = run_hearth("leaderboard", "--coordinator", url, "--limit", "2")
        assert first.returncode == 0, first.stderr
        assert "alice" in first.stdout and MARKUP in first.stdout and BROKEN_MARKUP not in first.stdout
        assert "1–2 of 3 volunteers; next: --page 2" in first.stderr

        second = run_hearth("leaderboard", "--coordinator", url, "--limit", "2", "--page", "2")
        assert second.returncode == 0 and BROKEN_MARKUP in second.stdout, second.stderr
        assert "3–3 of 3 volunteers" in second.stderr and "next" not in second.stderr

        wrong = run_hearth("leaderboard", "--coordinator", url + "/not-here")
        assert wrong.returncode == 1 and "Traceback" not in wrong.stderr
        assert wrong.stderr.strip().splitlines()[-1] == "Error: the coordinator refused (404): not found"
