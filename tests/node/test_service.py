"""`hearth node install-service / uninstall-service`: real files under tmp_path (HOME, XDG dirs and HEARTH_CONFIG
all point there), the real click commands, and systemd's own checker where it is installed."""

import os
import plistlib
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from click.testing import CliRunner

from node import service
from node.cli import node
from tests.conftest import run_hearth

URL = "http://127.0.0.1:8000"
EXEC_START = f"ExecStart={sys.executable} -m hearth node start --view log"


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    """A fake home: HOME, XDG_CONFIG_HOME and XDG_DATA_HOME under tmp_path, HEARTH_CONFIG a file in it."""
    for name in [name for name in os.environ if name.startswith("HEARTH_")]:
        monkeypatch.delenv(name)
    home = tmp_path / "home"
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / "xdg-config"))
    monkeypatch.setenv("XDG_DATA_HOME", str(home / "xdg-data"))
    monkeypatch.setenv("HEARTH_CONFIG", str(tmp_path / "conf" / "config.toml"))
    return home


def unit_path(home: Path) -> Path:
    return home / "xdg-config" / "systemd" / "user" / "hearth-node.service"


def plist_path(home: Path) -> Path:
    return home / "Library" / "LaunchAgents" / "org.hearth.node.plist"


def hearth_node(*args: str):
    return CliRunner().invoke(node, list(args), catch_exceptions=False)


def test_systemd_unit_runs_this_python_with_saved_settings_and_stops_gracefully(home):
    result = hearth_node("install-service", "--coordinator", URL)
    assert result.exit_code == 0, result.output
    saved = tomllib.loads(Path(os.environ["HEARTH_CONFIG"]).read_text())
    assert saved["coordinator_url"] == URL
    lines = unit_path(home).read_text().splitlines()
    for expected in (EXEC_START, f"Environment=HEARTH_CONFIG={os.environ['HEARTH_CONFIG']}",
                     f"Environment=HEARTH_NODE_DIR={home / 'xdg-data' / 'hearth'}",
                     "Restart=on-failure", "RestartSec=30", "KillMode=mixed", "KillSignal=SIGINT",
                     "Nice=10", "CPUWeight=20", "IOWeight=20", "WantedBy=default.target"):  # fmt: skip
        assert expected in lines
    stop_timeout = next(int(line.split("=")[1]) for line in lines if line.startswith("TimeoutStopSec="))
    assert stop_timeout >= 60
    for instruction in ("systemctl --user daemon-reload && systemctl --user enable --now hearth-node.service",
                        "journalctl --user -u hearth-node -f", "loginctl enable-linger $USER"):  # fmt: skip
        assert instruction in result.output


def test_unit_goes_to_xdg_config_home_or_dot_config(tmp_path):
    assert service.service_path("systemd", tmp_path, {"XDG_CONFIG_HOME": "/x/conf"}) == \
        Path("/x/conf/systemd/user/hearth-node.service")  # fmt: skip
    for environ in ({}, {"XDG_CONFIG_HOME": ""}, {"XDG_CONFIG_HOME": "relative/conf"}):
        expected = tmp_path / ".config/systemd/user/hearth-node.service"
        assert service.service_path("systemd", tmp_path, environ) == expected


def test_refuses_without_a_saved_coordinator_url(home, monkeypatch):
    monkeypatch.setenv("HEARTH_COORDINATOR_URL", URL)  # the service would not see this shell's variables
    result = hearth_node("install-service")
    assert result.exit_code == 1
    assert "hearth node config set coordinator_url URL" in result.output and "--coordinator URL" in result.output
    assert not unit_path(home).exists()


def test_reinstall_is_a_no_op_and_a_different_unit_needs_force(home):
    assert hearth_node("install-service", "--coordinator", URL).exit_code == 0
    first = unit_path(home).read_bytes()
    again = hearth_node("install-service")
    assert again.exit_code == 0 and "unchanged" in again.output
    assert unit_path(home).read_bytes() == first

    unit_path(home).write_text("[Service]\nExecStart=/bin/true\n")
    other = "http://127.0.0.1:9999"
    refused = hearth_node("install-service", "--coordinator", other)
    assert refused.exit_code == 1 and "--force" in refused.output
    assert unit_path(home).read_text() == "[Service]\nExecStart=/bin/true\n"
    assert tomllib.loads(Path(os.environ["HEARTH_CONFIG"]).read_text())["coordinator_url"] == URL  # nothing saved

    forced = hearth_node("install-service", "--force")
    assert forced.exit_code == 0 and "Replaced" in forced.output and "restart hearth-node.service" in forced.output
    assert unit_path(home).read_bytes() == first


def test_print_shows_the_unit_and_writes_nothing(home):
    result = CliRunner().invoke(node, ["install-service", "--print"])
    assert result.exit_code == 0
    assert EXEC_START in result.stdout.splitlines() and "KillMode=mixed" in result.stdout
    assert "not written" in result.stderr
    assert not unit_path(home).exists() and not Path(os.environ["HEARTH_CONFIG"]).exists()


def test_uninstall_removes_the_unit_but_not_while_it_is_enabled(home):
    nothing = hearth_node("uninstall-service")
    assert nothing.exit_code == 0 and "No Hearth service is installed" in nothing.output

    assert hearth_node("install-service", "--coordinator", URL).exit_code == 0
    link = service.enabled_link(unit_path(home))
    link.parent.mkdir()
    link.symlink_to(unit_path(home))  # what `systemctl --user enable` does
    refused = hearth_node("uninstall-service")
    assert refused.exit_code == 1 and "systemctl --user disable --now hearth-node.service" in refused.output
    assert unit_path(home).exists()

    link.unlink()
    removed = hearth_node("uninstall-service")
    assert removed.exit_code == 0 and "Removed" in removed.output and "daemon-reload" in removed.output
    assert not unit_path(home).exists()

    assert hearth_node("install-service").exit_code == 0
    link.symlink_to(unit_path(home))
    assert hearth_node("uninstall-service", "--force").exit_code == 0
    assert not unit_path(home).exists() and not link.is_symlink()


def test_macos_launch_agent(home):
    result = hearth_node("install-service", "--platform", "darwin", "--coordinator", URL)
    assert result.exit_code == 0, result.output
    with plist_path(home).open("rb") as file:
        agent = plistlib.load(file)
    assert agent["Label"] == "org.hearth.node"
    assert agent["ProgramArguments"] == [sys.executable, "-m", "hearth", "node", "start", "--view", "log"]
    assert agent["RunAtLoad"] is True and agent["KeepAlive"] == {"SuccessfulExit": False}
    assert agent["ProcessType"] == "Background" and agent["LowPriorityIO"] is True and agent["Nice"] == 10
    assert agent["EnvironmentVariables"]["HEARTH_CONFIG"] == os.environ["HEARTH_CONFIG"]
    data_dir = home / "xdg-data" / "hearth" / "node"
    assert agent["StandardOutPath"] == agent["StandardErrorPath"] == str(data_dir / "service.log")
    assert data_dir.is_dir()  # launchd does not create the log's folder
    assert f"launchctl bootstrap gui/$(id -u) {plist_path(home)}" in result.output
    assert "launchctl bootout" in result.output
    assert not unit_path(home).exists()

    assert "unchanged" in hearth_node("install-service", "--platform", "darwin").output
    removed = hearth_node("uninstall-service", "--platform", "darwin")
    assert removed.exit_code == 0 and "launchctl bootout gui/$(id -u)/org.hearth.node" in removed.output
    assert not plist_path(home).exists()


def test_other_platforms_get_a_one_line_error(home):
    for command in ("install-service", "uninstall-service"):
        result = run_hearth("node", command, "--platform", "win32")
        assert result.returncode == 1
        assert result.stderr.strip().count("\n") == 0 and "Traceback" not in result.stderr
        assert result.stderr.startswith("Error: installing a service works on Linux (systemd) and macOS (launchd)")
    assert not Path(os.environ["HEARTH_CONFIG"]).exists() and not (home / "xdg-config").exists()


def test_the_hearth_command_installs_the_unit(home):
    result = run_hearth("node", "install-service", "--coordinator", URL)
    assert result.returncode == 0, result.stderr
    assert EXEC_START in unit_path(home).read_text().splitlines()


def test_odd_interpreter_paths_are_quoted_or_refused():
    unit = service.systemd_unit(service.service_argv("/opt/my py%/bin/python"), {"HEARTH_CONFIG": "/c d/%h.toml"})
    assert 'ExecStart="/opt/my py%%/bin/python" -m hearth node start --view log' in unit
    assert 'Environment="HEARTH_CONFIG=/c d/%%h.toml"' in unit
    with pytest.raises(service.ServiceError, match="quote or a backslash"):
        service.systemd_unit(service.service_argv('/opt/a"b/python'), {})
    with pytest.raises(service.ServiceError, match="which Python"):
        service.service_argv("")


def test_systemd_analyze_accepts_the_unit(home, tmp_path):
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze is not installed on this machine")
    assert hearth_node("install-service", "--coordinator", URL).exit_code == 0
    odd = tmp_path / "my python %d $x"  # the interpreter under a path that needs quoting and escaping
    odd.mkdir()
    (odd / "python").symlink_to(sys.executable)
    odd_unit = tmp_path / "hearth-odd.service"
    odd_unit.write_text(service.systemd_unit(service.service_argv(str(odd / "python")), {"A": "b c%"}))
    runtime = tmp_path / "runtime"
    runtime.mkdir(mode=0o700)
    for path in (unit_path(home), odd_unit):
        result = subprocess.run([tool, "verify", "--user", str(path)], capture_output=True, text=True, timeout=60,
                                env={**os.environ, "XDG_RUNTIME_DIR": str(runtime)})  # fmt: skip
        complaints = [line for line in result.stderr.splitlines() if path.stem in line]
        assert result.returncode == 0 and not complaints, result.stderr


def test_service_modules_import_neither_torch_nor_hivemind():
    code = "import sys, node.service, node.service_cli; print(sorted({'torch', 'hivemind'} & set(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.stdout.strip() == "[]", result.stderr
