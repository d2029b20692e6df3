"""Settings: defaults < config.toml < HEARTH_* env < flags, `hearth node config show/set`, JSON round trip."""

import json
import os
import tomllib
from pathlib import Path

import pytest
from click.testing import CliRunner

from node.cli import _build_config, node
from node.config import NodeConfig, PolicyConfig
from node.settings import KEYS, dumps_toml, load_settings, resolve_key, set_in_file

URL = "http://127.0.0.1:8000"


@pytest.fixture
def config_file(tmp_path, monkeypatch):
    path = tmp_path / "conf" / "config.toml"
    for name in [name for name in os.environ if name.startswith("HEARTH_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("HEARTH_CONFIG", str(path))
    return path


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_precedence_file_then_env_then_flags(config_file, monkeypatch):
    write(config_file, f'coordinator_url = "{URL}"\nthreads = 3\ndevice = "cpu"\nname = "file"\n'
                       "[policy]\nidle_minutes = 5\nschedule = 'sat-sun *'\n")  # fmt: skip
    monkeypatch.setenv("HEARTH_THREADS", "2")
    monkeypatch.setenv("HEARTH_NAME", "env")
    monkeypatch.setenv("HEARTH_POLICY__IDLE_MINUTES", "7.5")
    settings = load_settings({"name": "flag", "device": None})
    config = settings.config()
    assert (config.coordinator_url, config.threads, config.device, config.name) == (URL, 2, "cpu", "flag")
    assert (config.policy.idle_minutes, config.policy.schedule) == (7.5, "sat-sun *")
    sources = {name: str(source) for name, source in settings.sources.items()}
    assert sources == {
        "coordinator_url": "file", "threads": "env HEARTH_THREADS", "device": "file", "name": "flag --name",
        "policy.idle_minutes": "env HEARTH_POLICY__IDLE_MINUTES", "policy.schedule": "file",
    }  # fmt: skip
    assert str(settings.source("port")) == "default"


def test_join_builds_its_config_from_file_env_and_flags(config_file, monkeypatch):
    write(config_file, f'coordinator_url = "{URL}"\nthreads = 3\n[policy]\nbattery_pause_below = 20\n')
    monkeypatch.setenv("HEARTH_DEVICE", "cpu")
    config = _build_config(coordinator_url=None, threads=None, policy__idle_minutes=2.0)
    assert (config.coordinator_url, config.threads, config.device) == (URL, 3, "cpu")
    assert (config.policy.idle_minutes, config.policy.battery_pause_below) == (2.0, 20)
    assert _build_config(coordinator_url="http://other:1/", threads=1).coordinator_url == "http://other:1"


def test_bad_values_name_their_origin(config_file, monkeypatch):
    monkeypatch.setenv("HEARTH_THREADS", "many")
    with pytest.raises(ValueError, match="HEARTH_THREADS: threads: expected a whole number"):
        load_settings()
    monkeypatch.delenv("HEARTH_THREADS")
    write(config_file, "device = 'tpu'\n")
    with pytest.raises(ValueError, match=r"config.toml: device: expected one of auto, cpu, cuda"):
        load_settings()
    write(config_file, "threads = [")
    with pytest.raises(ValueError, match="cannot read"):
        load_settings()
    write(config_file, "")
    with pytest.raises(ValueError, match="no coordinator URL"):
        load_settings().config()


def test_value_parsing():
    assert KEYS["client_mode"].parse("yes") is True and KEYS["client_mode"].parse("off") is False
    assert KEYS["max_epochs"].parse("none") is None and KEYS["duration"].parse(3) == 3.0
    assert KEYS["policy.schedule"].parse(" sat * ") == "sat *"
    for key, value in (("threads", "2.5"), ("threads", True), ("client_mode", "maybe"), ("name", 3)):
        with pytest.raises(ValueError, match=key):
            KEYS[key].parse(value)
    assert resolve_key("idle-minutes").name == "policy.idle_minutes"
    assert resolve_key("POLICY__SCHEDULE").name == "policy.schedule"
    with pytest.raises(ValueError, match="unknown setting 'treads'"):
        resolve_key("treads")


def test_config_set_writes_validates_and_unsets(config_file):
    runner = CliRunner()
    assert runner.invoke(node, ["config", "set", "threads", "2"]).exit_code == 0
    assert runner.invoke(node, ["config", "set", "idle-minutes", "5"]).exit_code == 0
    assert runner.invoke(node, ["config", "set", "policy.schedule", "mon-fri 22:00-07:00, sat-sun *"]).exit_code == 0
    assert runner.invoke(node, ["config", "set", "name", 'Ada "the" Lovelace\\'], catch_exceptions=False).exit_code == 0
    raw = tomllib.loads(config_file.read_text())
    assert raw == {"threads": 2, "name": 'Ada "the" Lovelace\\',
                   "policy": {"idle_minutes": 5.0, "schedule": "mon-fri 22:00-07:00, sat-sun *"}}  # fmt: skip
    before = config_file.read_text()
    for args, message in ((["threads", "0"], "threads must be at least 1"),
                          (["threads", "x"], "expected a whole number"),
                          (["battery_resume_above", "30"], "needs battery_pause_below"),
                          (["schedule", "mon 9"], "without an end"),
                          (["nope", "1"], "unknown setting")):  # fmt: skip
        result = runner.invoke(node, ["config", "set", *args])
        assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output
    assert config_file.read_text() == before  # nothing written on a bad value
    assert runner.invoke(node, ["config", "unset", "threads"]).exit_code == 0
    assert runner.invoke(node, ["config", "set", "idle_minutes", "none"]).exit_code == 0
    remaining = {"name": 'Ada "the" Lovelace\\', "policy": {"schedule": "mon-fri 22:00-07:00, sat-sun *"}}
    assert tomllib.loads(config_file.read_text()) == remaining


def test_config_show_prints_values_and_sources(config_file, monkeypatch):
    write(config_file, "threads = 3\n[policy]\nidle_minutes = 5\n")
    monkeypatch.setenv("HEARTH_POLICY__MAX_OTHER_CPU_PERCENT", "40")
    monkeypatch.setenv("COLUMNS", "200")
    result = CliRunner().invoke(node, ["config", "show"], catch_exceptions=False)
    assert result.exit_code == 0
    lines = {line.split()[1]: line for line in result.output.splitlines() if line.startswith("│")}
    assert "3" in lines["threads"] and "file" in lines["threads"]
    assert "40.0" in lines["policy.max_other_cpu_percent"]
    assert "env HEARTH_POLICY__MAX_OTHER_CPU_PERCENT" in lines["policy.max_other_cpu_percent"]
    assert "(not set)" in lines["coordinator_url"] and "default" in lines["device"]
    assert "half the cores" in lines["threads"]  # the field's documentation


def test_toml_writer_round_trips():
    raw = {"a": 1, "b": 2.5, "c": True, "d": "quote \" back\\slash\ttab é \x7f", "e": [1, "x"],
           "odd key": "v", "policy": {"f": False}}  # fmt: skip
    assert tomllib.loads(dumps_toml(raw)) == raw
    with pytest.raises(ValueError):
        dumps_toml({"t": {"deep": {"x": 1}}})


def test_set_in_file_keeps_unknown_settings(tmp_path):
    path = tmp_path / "config.toml"
    write(path, "future_option = 'x'\nthreads = 2\n")
    set_in_file(path, KEYS["device"], "cpu")
    assert tomllib.loads(path.read_text()) == {"future_option": "x", "threads": 2, "device": "cpu"}


def test_json_round_trip_keeps_the_policy():
    policy = PolicyConfig(idle_minutes=5, battery_pause_below=15, schedule="mon-fri 22:00-07:00", pause_on_gpu_busy=True)
    config = NodeConfig(URL, threads=2, policy=policy)
    copy = NodeConfig.from_json_dict(json.loads(json.dumps(config.to_json_dict())))
    assert copy == config and isinstance(copy.policy, PolicyConfig)
    assert copy.policy.battery_resume_above == 25
