"""What the PC is doing besides Hearth: one small object per signal, each with one method, so tests inject fakes.

A sensor returns None when the platform gives no signal; it then says so once in the log and never guesses.
"""

import ctypes
import logging
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Optional, Protocol

import psutil

logger = logging.getLogger(__name__)
COMMAND_TIMEOUT = 2.0


class IdleSensor(Protocol):
    def idle_seconds(self) -> Optional[float]:
        """Seconds since the last keyboard/mouse input, or None when unknown."""


class OtherCpuSensor(Protocol):
    def other_percent(self) -> Optional[float]:
        """Share (0-100 %) of all CPU cores used by processes outside this node's process tree."""


class GpuSensor(Protocol):
    def other_gpu_processes(self) -> Optional[list[str]]:
        """GPU compute processes that are not ours ("1234 blender"), [] when none, None when unknown."""


@dataclass(frozen=True)
class BatteryState:
    percent: float
    plugged: Optional[bool]
    """None when the platform cannot tell."""


class BatterySensor(Protocol):
    def battery(self) -> Optional[BatteryState]:
        """Charge and power source, or None without a battery (desktops) or a signal."""


class _WarnOnce:
    _warned = False

    def no_signal(self, message: str, *args) -> None:
        if not self._warned:
            self._warned = True
            logger.info(message, *args)


def _run(argv: list[str]) -> Optional[str]:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=COMMAND_TIMEOUT)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout if done.returncode == 0 else None


class SystemIdleSensor(_WarnOnce):
    """X11 xprintidle, then systemd-logind's IdleHint (Linux); GetLastInputInfo (Windows); HIDIdleTime (macOS)."""

    def idle_seconds(self) -> Optional[float]:
        for probe in (self._xprintidle, self._logind, self._windows, self._macos):
            seconds = probe()
            if seconds is not None:
                return max(0.0, seconds)
        self.no_signal("No input-idle signal on this platform (no xprintidle, logind session, Windows or macOS API)")
        return None

    def _xprintidle(self) -> Optional[float]:
        if not os.environ.get("DISPLAY") or not shutil.which("xprintidle"):
            return None
        output = _run(["xprintidle"])
        return int(output.strip()) / 1000 if output and output.strip().isdigit() else None

    def _logind(self) -> Optional[float]:
        session = os.environ.get("XDG_SESSION_ID")
        if not sys.platform.startswith("linux") or not session or not shutil.which("loginctl"):
            return None
        output = _run(["loginctl", "show-session", session, "-p", "IdleHint", "-p", "IdleSinceHint"])
        values = dict(line.split("=", 1) for line in (output or "").splitlines() if "=" in line)
        if values.get("IdleHint") == "no":
            return 0.0
        if values.get("IdleHint") == "yes" and values.get("IdleSinceHint", "0").isdigit():
            since = int(values["IdleSinceHint"]) / 1e6  # microseconds, wall clock
            return time.time() - since if since > 0 else None
        return None

    def _windows(self) -> Optional[float]:
        if sys.platform != "win32":
            return None

        class LastInputInfo(ctypes.Structure):
            _fields_ = [("cbSize", ctypes.c_uint), ("dwTime", ctypes.c_uint)]

        info = LastInputInfo(ctypes.sizeof(LastInputInfo), 0)
        if not ctypes.windll.user32.GetLastInputInfo(ctypes.byref(info)):  # type: ignore[attr-defined]
            return None
        return ((ctypes.windll.kernel32.GetTickCount() - info.dwTime) & 0xFFFFFFFF) / 1000  # type: ignore

    def _macos(self) -> Optional[float]:
        if sys.platform != "darwin":
            return None
        for line in (_run(["ioreg", "-c", "IOHIDSystem", "-d", "4"]) or "").splitlines():
            if '"HIDIdleTime"' in line:
                value = line.rsplit("=", 1)[-1].strip()
                return int(value) / 1e9 if value.isdigit() else None
        return None


def _tree(root: psutil.Process) -> list[psutil.Process]:
    try:
        return [root, *root.children(recursive=True)]
    except psutil.Error:
        return [root]


class PsutilCpuSensor:
    """Total CPU use minus this process tree's share, averaged since the previous call."""

    def __init__(self, root_pid: Optional[int] = None):
        self.root = psutil.Process(root_pid or os.getpid())
        self.cores = psutil.cpu_count() or 1
        self._processes: dict[int, psutil.Process] = {}
        self.other_percent()  # prime the counters: psutil measures between calls

    def other_percent(self) -> Optional[float]:
        total = psutil.cpu_percent(interval=None)
        ours, seen = 0.0, {}
        for process in _tree(self.root):
            process = self._processes.get(process.pid, process)  # keep the object that holds the last sample
            try:
                ours += process.cpu_percent(interval=None)
                seen[process.pid] = process
            except psutil.Error:
                pass
        self._processes = seen
        return min(100.0, max(0.0, total - ours / self.cores))


class NvmlGpuSensor(_WarnOnce):
    """Compute processes on any NVIDIA GPU that are not in this node's process tree (needs nvidia-ml-py)."""

    def __init__(self, root_pid: Optional[int] = None):
        self.root = psutil.Process(root_pid or os.getpid())
        self._nvml = None
        try:
            import pynvml

            pynvml.nvmlInit()
            self._nvml = pynvml
        except Exception as e:  # not installed, no driver, no GPU: all mean "no signal"
            self.no_signal("No GPU activity signal (NVML unavailable: %s)", e)

    def other_gpu_processes(self) -> Optional[list[str]]:
        if self._nvml is None:
            return None
        try:
            ours = {process.pid for process in _tree(self.root)}
            others = []
            for index in range(self._nvml.nvmlDeviceGetCount()):
                handle = self._nvml.nvmlDeviceGetHandleByIndex(index)
                for process in self._nvml.nvmlDeviceGetComputeRunningProcesses(handle):
                    if process.pid not in ours:
                        others.append(f"{process.pid} {_process_name(process.pid)}")
            return others
        except Exception as e:
            self.no_signal("Cannot list GPU processes: %s", e)
            return None


def _process_name(pid: int) -> str:
    try:
        return psutil.Process(pid).name()
    except psutil.Error:
        return "(another user's process)"


class PsutilBatterySensor(_WarnOnce):
    def battery(self) -> Optional[BatteryState]:
        try:
            state = psutil.sensors_battery()
        except (AttributeError, NotImplementedError, OSError):
            state = None
        if state is None:
            self.no_signal("No battery found (a desktop, or the platform does not report one)")
            return None
        return BatteryState(percent=float(state.percent), plugged=state.power_plugged)


@dataclass
class Sensors:
    """The signals a Policy reads. `Sensors.system()` gives the real ones; tests pass fakes; None: no signal."""

    idle: Optional[IdleSensor] = None
    cpu: Optional[OtherCpuSensor] = None
    gpu: Optional[GpuSensor] = None
    battery: Optional[BatterySensor] = None

    @classmethod
    def system(cls, root_pid: Optional[int] = None) -> "Sensors":
        """Real sensors; `root_pid` is the node's top process (default: this one) whose tree counts as ours."""
        return cls(SystemIdleSensor(), PsutilCpuSensor(root_pid), NvmlGpuSensor(root_pid), PsutilBatterySensor())
