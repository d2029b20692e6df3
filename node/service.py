"""Run the node as a per-user service: a systemd user unit on Linux, a launchd agent on macOS.

Pure logic, no click: which file goes where, what it holds, install / uninstall, and the commands that the
volunteer runs next (node/service_cli.py prints them). The platform, the home directory and the environment
are parameters, so both platforms' files can be built and checked on any machine. Imports neither torch nor
hivemind.

The service runs `python -m hearth node start --view log` with the interpreter that installed it: a node that keeps
running with the saved settings, trains in the saved coordinator's swarm, takes other swarms from `hearth join`
within seconds, and logs a line per epoch (to the journal on Linux).
"""

import os
import plistlib
import re
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Mapping, Optional

from node.config import NodeConfig, default_data_dir
from node.settings import CONFIG_ENV, KEYS, config_path, load_settings

Kind = Literal["systemd", "launchd"]
UNIT_NAME = "hearth-node.service"
AGENT_LABEL = "org.hearth.node"
LOG_NAME = "service.log"
STOP_TIMEOUT_SECONDS = 90  # the node finishes its batch, drains its reports (10 s) and stops hivemind first
RESTART_SECONDS = 30
_PLAIN_WORD = re.compile(r"^[A-Za-z0-9_@%+=:,./$-]+$")


class ServiceError(ValueError):
    """Something the volunteer has to change; the message is one line that says what."""


@dataclass(frozen=True)
class ServiceFile:
    """A service definition for one platform: where it goes and its exact bytes."""

    kind: Kind
    path: Path
    content: bytes

    @property
    def text(self) -> str:
        return self.content.decode("utf-8")


def service_kind(platform: str = sys.platform) -> Kind:
    if platform.startswith("linux"):
        return "systemd"
    if platform == "darwin":
        return "launchd"
    raise ServiceError(f"installing a service works on Linux (systemd) and macOS (launchd), not on {platform}; "
                       "start the node with `hearth node start` instead")  # fmt: skip


def service_path(kind: Kind, home: Path, environ: Mapping[str, str] = os.environ) -> Path:
    """~/.config/systemd/user/hearth-node.service ($XDG_CONFIG_HOME respected) or the LaunchAgents plist."""
    if kind == "launchd":
        return home / "Library" / "LaunchAgents" / f"{AGENT_LABEL}.plist"
    xdg = environ.get("XDG_CONFIG_HOME", "")
    config_home = Path(xdg) if os.path.isabs(xdg) else home / ".config"  # the XDG spec ignores relative paths
    return config_home / "systemd" / "user" / UNIT_NAME


def enabled_link(path: Path) -> Path:
    """The symlink `systemctl --user enable` creates for a unit with WantedBy=default.target."""
    return path.parent / "default.target.wants" / path.name


def saved_config(path: Path) -> NodeConfig:
    """The NodeConfig the service will see: the config file alone (HEARTH_* variables of this shell do not reach
    it). ServiceError when the file is invalid or has no coordinator URL."""
    try:
        settings = load_settings(environ={}, path=path)
        config = settings.config(require_url=False)
    except ValueError as e:
        raise ServiceError(str(e)) from None
    if "coordinator_url" not in settings.values:
        raise ServiceError(f"no coordinator URL saved in {path}: run `hearth node config set coordinator_url URL` "
                           "first, or pass --coordinator URL")  # fmt: skip
    return config


def service_environment(environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """Variables the service needs to find the same files as this shell. A service manager does not start from
    the login shell's environment, so a custom XDG_CONFIG_HOME / XDG_DATA_HOME would otherwise point it at
    another config file and another data dir (another identity). HEARTH_NODE_DIR only moves the default data
    dir; a data_dir saved in the config file still wins."""
    return {
        CONFIG_ENV: str(config_path(environ).absolute()),
        "HEARTH_NODE_DIR": str(Path(environ.get("HEARTH_NODE_DIR") or default_data_dir().parent).absolute()),
        "PYTHONUNBUFFERED": "1",  # log lines reach the journal / log file as they happen
    }


def overridden_settings(environ: Mapping[str, str] = os.environ) -> list[str]:
    """HEARTH_* setting variables set in this shell: the service will not see them."""
    return sorted(key.env for key in KEYS.values() if environ.get(key.env, "").strip())


def service_argv(python: str = sys.executable) -> list[str]:
    if not python or not os.path.isabs(python):
        raise ServiceError(f"cannot tell which Python runs Hearth (sys.executable is {python!r})")
    return [python, "-m", "hearth", "node", "start", "--view", "log"]


def systemd_unit(argv: list[str], environment: Mapping[str, str]) -> str:
    lines = [
        "# Written by `hearth node install-service`; remove it with `hearth node uninstall-service`.",
        "[Unit]",
        "Description=Hearth volunteer compute node",
        "",
        "[Service]",
        "Type=simple",
        "ExecStart=" + " ".join([_systemd_executable(argv[0]), *map(_systemd_word, argv[1:])]),
        *(f"Environment={_systemd_word(f'{name}={value}')}" for name, value in sorted(environment.items())),
        "Restart=on-failure",
        f"RestartSec={RESTART_SECONDS}",
        "# mixed, not control-group: `hearth node start` is a supervisor that forwards ONE SIGINT to the worker, which",
        "# then stops gracefully, ends hivemind's helpers itself and exits. control-group would signal every",
        "# process of the unit at once: the worker would get a second SIGINT (its 'Ctrl+C twice: force stop')",
        "# and hivemind's helpers and p2pd would die under it. mixed sends KillSignal to the supervisor only and",
        "# then SIGKILL to whatever is left anywhere in the unit's cgroup, in any process group or session (the",
        "# worker and p2pd run in sessions of their own), so nothing survives. process would leave those behind.",
        "KillMode=mixed",
        "KillSignal=SIGINT",
        f"TimeoutStopSec={STOP_TIMEOUT_SECONDS}",
        "# 130: the signal came while the node was still starting, before it could stop gracefully.",
        "SuccessExitStatus=130",
        "# Keep the PC usable: lower CPU priority and a small share of CPU and disk when they are contended.",
        "Nice=10",
        "CPUWeight=20",
        "IOWeight=20",
        "IOSchedulingClass=best-effort",
        "IOSchedulingPriority=7",
        "",
        "[Install]",
        "WantedBy=default.target",
    ]  # fmt: skip
    return "\n".join(lines) + "\n"


def _systemd_word(word: str) -> str:
    """One word of a unit file setting: % specifiers escaped, quoted unless it holds only plain characters."""
    if any(ord(char) < 32 or ord(char) == 127 for char in word):
        raise ServiceError(f"cannot put {word!r} into a systemd unit: it holds a control character")
    text = word.replace("%", "%%")
    if _PLAIN_WORD.match(text):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _systemd_executable(path: str) -> str:
    """ExecStart's program: systemd expands no $ in it and refuses quotes and backslashes."""
    if any(char in path for char in "\"'\\"):
        raise ServiceError(f"systemd cannot run a program whose path holds a quote or a backslash: {path}; "
                           "install Hearth under a plainer path")  # fmt: skip
    return _systemd_word(path)


def launchd_plist(argv: list[str], environment: Mapping[str, str], log_path: Path) -> bytes:
    agent = {
        "Label": AGENT_LABEL,
        "ProgramArguments": list(argv),
        "EnvironmentVariables": dict(environment),
        "RunAtLoad": True,
        "KeepAlive": {"SuccessfulExit": False},  # restart after a failure, not after a clean stop
        "ThrottleInterval": RESTART_SECONDS,
        "ExitTimeOut": STOP_TIMEOUT_SECONDS,  # SIGTERM, then this long for the graceful stop, then SIGKILL
        "ProcessType": "Background",
        "LowPriorityIO": True,
        "Nice": 10,
        "StandardOutPath": str(log_path),
        "StandardErrorPath": str(log_path),
    }  # fmt: skip
    return plistlib.dumps(agent, fmt=plistlib.FMT_XML, sort_keys=True)


def build(platform: str = sys.platform, home: Optional[Path] = None, environ: Mapping[str, str] = os.environ,
          python: str = sys.executable, data_dir: Optional[Path] = None) -> ServiceFile:  # fmt: skip
    """This platform's service file. `data_dir` (launchd's log goes there) defaults to the saved one."""
    kind = service_kind(platform)
    path = service_path(kind, home or Path.home(), environ)
    argv, environment = service_argv(python), service_environment(environ)
    if kind == "systemd":
        return ServiceFile(kind, path, systemd_unit(argv, environment).encode("utf-8"))
    if data_dir is None:
        try:
            data_dir = load_settings(environ={}, path=config_path(environ)).config(require_url=False).data_dir
        except ValueError as e:
            raise ServiceError(str(e)) from None
    return ServiceFile(kind, path, launchd_plist(argv, environment, data_dir.absolute() / LOG_NAME))


def check_replace(service: ServiceFile, force: bool = False) -> Literal["new", "same", "replace"]:
    """What installing would do; ServiceError when a different file is there and `force` is not given."""
    existing = service.path.read_bytes() if service.path.is_file() else None
    if existing is None:
        return "new"
    if existing == service.content:
        return "same"
    if not force:
        raise ServiceError(f"{service.path} already exists and differs from this one; see the new one with "
                           "--print, replace it with --force")  # fmt: skip
    return "replace"


def install(service: ServiceFile, force: bool = False) -> Literal["new", "same", "replace"]:
    """Write the file (atomically). The same file again is a no-op; a different one needs `force`."""
    plan = check_replace(service, force)
    if plan == "same":
        return plan
    if service.kind == "launchd":  # launchd does not create the log file's folder
        log_dir = Path(plistlib.loads(service.content)["StandardOutPath"]).parent
        log_dir.mkdir(parents=True, exist_ok=True)
    service.path.parent.mkdir(parents=True, exist_ok=True)
    temporary = service.path.with_name(service.path.name + ".tmp")
    temporary.write_bytes(service.content)
    os.replace(temporary, service.path)
    return plan


def uninstall(kind: Kind, path: Path, force: bool = False) -> bool:
    """Remove the service file; False when there is none. A systemd unit that is still enabled is kept unless
    `force` (then its enable link goes too): `systemctl --user disable` needs the file to find it."""
    if not path.is_file():
        return False
    link = enabled_link(path)
    if kind == "systemd" and link.is_symlink():
        if not force:
            raise ServiceError(f"{UNIT_NAME} is still enabled: run `{SYSTEMD_DISABLE}` first, then this again "
                               "(--force removes it anyway)")  # fmt: skip
        link.unlink()
    path.unlink()
    return True


SYSTEMD_ENABLE = f"systemctl --user daemon-reload && systemctl --user enable --now {UNIT_NAME}"
SYSTEMD_DISABLE = f"systemctl --user disable --now {UNIT_NAME}"
LAUNCHD_DOMAIN = "gui/$(id -u)"


def next_steps(service: ServiceFile, outcome: str) -> list[str]:
    """What to run after installing, one instruction per line."""
    if service.kind == "systemd":
        lines = ["Start it now and at every login:", f"  {SYSTEMD_ENABLE}"]
        if outcome == "replace":
            lines += ["If it was already running, restart it to use the new unit:",
                      f"  systemctl --user daemon-reload && systemctl --user restart {UNIT_NAME}"]  # fmt: skip
        return lines + [
            "Follow its log:", "  journalctl --user -u hearth-node -f",
            "Keep it running while you are logged out (and start it at boot):", "  loginctl enable-linger $USER",
            f"Stop it for good: {SYSTEMD_DISABLE}",
        ]  # fmt: skip
    log_path, plist = plistlib.loads(service.content)["StandardOutPath"], shlex.quote(str(service.path))
    lines = []
    if outcome == "replace":
        lines += ["If it was loaded, unload the old one first:", f"  launchctl bootout {LAUNCHD_DOMAIN}/{AGENT_LABEL}"]
    return lines + [
        "Start it now and at every login:", f"  launchctl bootstrap {LAUNCHD_DOMAIN} {plist}",
        f"Its log: {log_path}",
        f"Stop it for good: launchctl bootout {LAUNCHD_DOMAIN} {plist}",
    ]  # fmt: skip


def after_uninstall(kind: Kind) -> list[str]:
    if kind == "systemd":
        return [f"If it is still running, stop it: systemctl --user stop {UNIT_NAME}",
                "Then let systemd forget it: systemctl --user daemon-reload"]  # fmt: skip
    return [f"If it is still loaded, unload it: launchctl bootout {LAUNCHD_DOMAIN}/{AGENT_LABEL}"]
