"""`hearth team …` through the real command against a real coordinator process."""

import os
import time

from node.accounts import save_keys
from node.identity import NodeIdentity
from protocol.envelope import seal
from protocol.messages import VolunteerRegistration
from tests.conftest import run_hearth


def test_team_create_join_leave_through_the_cli(coordinator, tmp_path):
    env = {**os.environ, "HEARTH_CONFIG": str(tmp_path / "config.toml")}
    dirs = {}
    for name in ("cli-founder", "cli-member"):
        dirs[name] = tmp_path / name
        key = NodeIdentity.load_or_create(dirs[name]).key
        body = seal(VolunteerRegistration(name=name, public_key=key.public_key, time=time.time()), key)
        registered = coordinator.api.post("/api/v1/volunteers", content=body)
        assert registered.status_code == 201
        save_keys(dirs[name], registered.json())  # as `hearth join` keeps them: team actions need the account key

    def team(who: str, *args: str):
        return run_hearth("team", *args, "--coordinator", coordinator.url, "--data-dir", str(dirs[who]), env=env)

    created = team("cli-founder", "create", "CLI Team")
    assert created.returncode == 0, created.stderr
    assert "cli-founder is now in team 'CLI Team' (founder)" in created.stdout
    assert team("cli-member", "join", "CLI Team").returncode == 0
    assert team("cli-founder", "leave").returncode == 0
    detail = coordinator.get("/api/v1/teams/CLI Team")
    assert detail["founder"] == "cli-founder" and detail["members"] == ["cli-member"]

    for args, message in ((("create", "CLI Team"), "already exists"), (("join", "No Such Team"), "no team named")):
        refused = team("cli-member", *args)
        assert refused.returncode == 1 and message in refused.stderr and "Traceback" not in refused.stderr
        assert len(refused.stderr.strip().splitlines()) == 1
