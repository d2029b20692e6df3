"""When to compute: the volunteer's rules (PolicyConfig) applied to what the PC is doing (sensors).

    policy = Policy.from_config(config.policy)          # real sensors, real clocks
    decision = policy.evaluate()                        # cheap: sensors are re-read at most every poll_seconds
    if not decision.run: wait, show decision.reason
    elif not decision.gpu_allowed: keep the GPU free (decision.reason says why)

Blocking reasons are checked in this order and the first one is reported: paused by you, snoozed, schedule,
battery, input idle, other programs' CPU. A rule whose sensor gives no signal never pauses; the first
decision after that carries a note saying the rule is inactive.
"""

import logging
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Callable, Optional

from node.config import PolicyConfig
from node.schedule import Schedule
from node.sensors import BatteryState, Sensors

logger = logging.getLogger(__name__)
DEFAULT_POLL_SECONDS = 5.0


@dataclass(frozen=True)
class Decision:
    run: bool
    """Compute now?"""
    reason: Optional[str] = None
    """Why not (or why only on CPU), in plain words; None when nothing limits the node."""
    gpu_allowed: bool = True
    """False while another program computes on the GPU and pause_on_gpu_busy is set."""
    notes: tuple[str, ...] = ()
    """Rules that became inactive because their sensor gives no signal; each is reported once."""


def local_now() -> datetime:
    return datetime.now().astimezone()


def _number(value: float) -> str:
    return f"{value:g}"


class Policy:
    def __init__(
        self,
        config: PolicyConfig,
        sensors: Sensors,
        now: Callable[[], datetime] = local_now,
        monotonic: Callable[[], float] = time.monotonic,
        poll_seconds: float = DEFAULT_POLL_SECONDS,
    ):
        """`now` gives aware local time (schedule, snooze); `monotonic` paces sensor reads."""
        self.config, self.sensors, self.now, self.monotonic = config, sensors, now, monotonic
        self.poll_seconds = poll_seconds
        self.schedule = Schedule.parse(config.schedule) if config.schedule else None
        self._lock = threading.Lock()
        self._paused = False
        self._snoozed_until: Optional[datetime] = None
        self._on_battery_pause = False
        self._readings: dict[str, tuple[float, object]] = {}
        self._inactive: set[str] = set()

    @classmethod
    def from_config(cls, config: PolicyConfig, root_pid: Optional[int] = None, **kwargs) -> "Policy":
        """The policy with the system's real sensors; `root_pid` heads the process tree that counts as ours."""
        return cls(config, Sensors.system(root_pid), **kwargs)

    # -- the volunteer's controls -------------------------------------------------------------------------

    def pause(self) -> None:
        """Pause until resume()."""
        with self._lock:
            self._paused = True

    def snooze(self, seconds: float) -> datetime:
        """Pause for `seconds`, then carry on by itself; returns when."""
        with self._lock:
            self._snoozed_until = self.now() + timedelta(seconds=seconds)
            return self._snoozed_until

    def resume(self) -> None:
        """Clear a manual pause and a snooze (the other rules still apply)."""
        with self._lock:
            self._paused, self._snoozed_until = False, None

    # -- deciding ---------------------------------------------------------------------------------------

    def evaluate(self) -> Decision:
        with self._lock:
            now, notes = self.now(), []
            blocking = [reason for reason in (self._manual(now), self._scheduled(now), self._battery(notes),
                                              self._idle(notes), self._other_cpu(notes)) if reason]  # fmt: skip
            gpu_reason = self._gpu(notes)
        if blocking:
            return Decision(False, blocking[0], gpu_reason is None, tuple(notes))
        return Decision(True, gpu_reason, gpu_reason is None, tuple(notes))

    def _manual(self, now: datetime) -> Optional[str]:
        if self._snoozed_until is not None and now >= self._snoozed_until:
            self._snoozed_until = None
        if self._paused:
            return "paused by you"
        if self._snoozed_until is not None:
            return f"snoozed until {self._snoozed_until.astimezone(now.tzinfo):%H:%M}"
        return None

    def _scheduled(self, now: datetime) -> Optional[str]:
        if self.schedule is None or self.schedule.allows(now):
            return None
        reason = f"paused: outside schedule {self.schedule}"
        change = self.schedule.next_change(now)
        return f"{reason} (resumes {change:%a %H:%M})" if change else reason

    def _battery(self, notes: list) -> Optional[str]:
        below, above = self.config.battery_pause_below, self.config.battery_resume_above
        if below is None:
            return None
        state = self._read("battery", lambda: self.sensors.battery and self.sensors.battery.battery(), notes,
                           "battery rule inactive: no battery found")  # fmt: skip
        if not isinstance(state, BatteryState) or state.plugged:
            self._on_battery_pause = False
            return None
        if state.percent < below:
            self._on_battery_pause = True
        elif state.percent >= above:
            self._on_battery_pause = False
        if not self._on_battery_pause:
            return None
        return f"paused: on battery at {state.percent:.0f}% (resumes above {above}%)"

    def _idle(self, notes: list) -> Optional[str]:
        if self.config.idle_minutes is None:
            return None
        idle = self._read("idle", lambda: self.sensors.idle and self.sensors.idle.idle_seconds(), notes,
                          "idle rule inactive: this PC gives no keyboard/mouse idle time")  # fmt: skip
        if idle is None or idle >= self.config.idle_minutes * 60:
            return None
        return f"paused: you are using this PC (idle {idle / 60:.1f} min < {_number(self.config.idle_minutes)} min)"

    def _other_cpu(self, notes: list) -> Optional[str]:
        limit = self.config.max_other_cpu_percent
        if limit is None:
            return None
        load = self._read("cpu", lambda: self.sensors.cpu and self.sensors.cpu.other_percent(), notes,
                          "CPU load rule inactive: other programs' CPU use is unknown")  # fmt: skip
        if load is None or load <= limit:
            return None
        return f"paused: other programs use {load:.0f}% CPU (limit {_number(limit)}%)"

    def _gpu(self, notes: list) -> Optional[str]:
        if not self.config.pause_on_gpu_busy:
            return None
        others = self._read("gpu", lambda: self.sensors.gpu and self.sensors.gpu.other_gpu_processes(), notes,
                            "GPU rule inactive: cannot see other programs on the GPU (needs nvidia-ml-py)")  # fmt: skip
        if not others:
            return None
        return f"GPU busy: used by {', '.join(others[:3])}{' …' if len(others) > 3 else ''}"

    def _read(self, name: str, read: Callable[[], object], notes: list, inactive: str):
        """A sensor reading, cached for poll_seconds; None (noted once) when it gives no signal."""
        now = self.monotonic()
        cached = self._readings.get(name)
        if cached is None or now - cached[0] >= self.poll_seconds:
            try:
                value = read()
            except Exception:  # a broken sensor must not stop the node, nor pause it
                logger.exception("Sensor %s failed", name)
                value = None
            cached = self._readings[name] = (now, value)
        if cached[1] is None and name not in self._inactive:
            self._inactive.add(name)
            logger.warning("%s", inactive)
            notes.append(inactive)
        return cached[1]
