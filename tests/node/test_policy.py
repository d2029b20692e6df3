"""Decision logic of the resource policy, with a fake clock and fake sensors; the real sensors get a smoke test."""

from datetime import datetime, timedelta, timezone
from typing import Optional

import pytest

from node.config import PolicyConfig
from node.policy import Policy
from node.sensors import BatteryState, Sensors

MONDAY_NOON = datetime(2024, 1, 1, 12, 0, tzinfo=timezone.utc)


class Clock:
    def __init__(self, start: datetime = MONDAY_NOON):
        self.wall, self.ticks = start, 0.0

    def now(self) -> datetime:
        return self.wall

    def monotonic(self) -> float:
        return self.ticks

    def advance(self, seconds: float) -> None:
        self.wall += timedelta(seconds=seconds)
        self.ticks += seconds


class FakeSensors:
    """Readings the test sets directly; None means the platform gives no signal."""

    def __init__(self):
        self.idle: Optional[float] = 3600.0
        self.cpu: Optional[float] = 0.0
        self.gpu: Optional[list[str]] = []
        self.power: Optional[BatteryState] = None
        self.reads = 0

    def idle_seconds(self):
        self.reads += 1
        return self.idle

    def other_percent(self):
        return self.cpu

    def other_gpu_processes(self):
        return self.gpu

    def battery(self):
        return self.power

    def as_sensors(self) -> Sensors:
        return Sensors(idle=self, cpu=self, gpu=self, battery=self)


def make(clock: Clock = None, **rules):
    clock, fake = clock or Clock(), FakeSensors()
    policy = Policy(PolicyConfig(**rules), fake.as_sensors(), now=clock.now, monotonic=clock.monotonic, poll_seconds=0)
    return policy, fake, clock


def test_no_rules_always_run():
    policy, _, _ = make()
    assert policy.evaluate().run and policy.evaluate().gpu_allowed and policy.evaluate().reason is None


def test_idle_rule_pauses_while_the_user_is_active():
    policy, fake, _ = make(idle_minutes=5)
    fake.idle = 30
    decision = policy.evaluate()
    assert not decision.run
    assert decision.reason == "paused: you are using this PC (idle 0.5 min < 5 min)"
    fake.idle = 300
    assert policy.evaluate().run


def test_other_cpu_load_rule():
    policy, fake, _ = make(max_other_cpu_percent=50)
    fake.cpu = 73.4
    assert policy.evaluate().reason == "paused: other programs use 73% CPU (limit 50%)"
    fake.cpu = 50
    assert policy.evaluate().run


def test_busy_gpu_only_takes_the_gpu_away():
    policy, fake, _ = make(pause_on_gpu_busy=True)
    fake.gpu = ["4242 blender"]
    decision = policy.evaluate()
    assert decision.run and not decision.gpu_allowed
    assert "4242 blender" in decision.reason
    fake.gpu = []
    assert policy.evaluate().gpu_allowed
    ignored, fake, _ = make()
    fake.gpu = ["4242 blender"]
    assert ignored.evaluate().gpu_allowed  # the rule is off


def test_battery_hysteresis():
    policy, fake, _ = make(battery_pause_below=20, battery_resume_above=40)
    fake.power = BatteryState(percent=25, plugged=False)
    assert policy.evaluate().run
    fake.power = BatteryState(percent=18, plugged=False)
    assert policy.evaluate().reason == "paused: on battery at 18% (resumes above 40%)"
    fake.power = BatteryState(percent=30, plugged=False)
    assert not policy.evaluate().run  # in between: stays paused
    fake.power = BatteryState(percent=40, plugged=False)
    assert policy.evaluate().run
    fake.power = BatteryState(percent=30, plugged=False)
    assert policy.evaluate().run  # in between after resuming: keeps running


def test_plugging_in_resumes_and_default_hysteresis():
    policy, fake, _ = make(battery_pause_below=20)
    assert policy.config.battery_resume_above == 30
    fake.power = BatteryState(percent=10, plugged=False)
    assert not policy.evaluate().run
    fake.power = BatteryState(percent=10, plugged=True)
    assert policy.evaluate().run
    fake.power = BatteryState(percent=25, plugged=False)
    assert policy.evaluate().run  # unplugged again, above the pause level


def test_schedule_rule():
    policy, _, clock = make(schedule="mon-fri 22:00-07:00, sat-sun *")
    decision = policy.evaluate()
    assert not decision.run
    assert decision.reason.startswith("paused: outside schedule mon-fri 22:00-07:00, sat-sun *")
    assert "resumes Mon 22:00" in decision.reason
    clock.advance(10 * 3600)  # Monday 22:00
    assert policy.evaluate().run


def test_snooze_expires_by_itself():
    policy, _, clock = make()
    policy.snooze(300)
    assert policy.evaluate().reason == "snoozed until 12:05"
    clock.advance(299)
    assert not policy.evaluate().run
    clock.advance(1)
    assert policy.evaluate().run


def test_manual_pause_until_resume_which_also_clears_a_snooze():
    policy, _, clock = make()
    policy.pause()
    clock.advance(86400)
    assert policy.evaluate().reason == "paused by you"
    policy.resume()
    assert policy.evaluate().run
    policy.snooze(3600)
    policy.resume()
    assert policy.evaluate().run


def test_first_blocking_reason_is_reported():
    policy, fake, _ = make(idle_minutes=5, max_other_cpu_percent=50, battery_pause_below=20,
                           schedule="sat-sun *", pause_on_gpu_busy=True)  # fmt: skip
    fake.idle, fake.cpu, fake.gpu = 0, 90, ["1 game"]
    fake.power = BatteryState(percent=5, plugged=False)
    policy.pause()
    reasons = [policy.evaluate().reason]
    policy.resume()
    policy.snooze(60)
    reasons.append(policy.evaluate().reason)
    policy.resume()
    reasons.append(policy.evaluate().reason)
    policy.config.schedule, policy.schedule = None, None
    reasons.append(policy.evaluate().reason)
    fake.power = BatteryState(percent=5, plugged=True)
    reasons.append(policy.evaluate().reason)
    fake.idle = 3600
    reasons.append(policy.evaluate().reason)
    fake.cpu = 0
    last = policy.evaluate()
    assert [reason.split(" ")[0:2] for reason in reasons] == [
        ["paused", "by"], ["snoozed", "until"], ["paused:", "outside"], ["paused:", "on"],
        ["paused:", "you"], ["paused:", "other"],
    ]  # fmt: skip
    assert last.run and not last.gpu_allowed


def test_missing_signals_never_pause_and_are_noted_once():
    policy, fake, _ = make(idle_minutes=5, max_other_cpu_percent=10, pause_on_gpu_busy=True, battery_pause_below=50)
    fake.idle = fake.cpu = fake.gpu = fake.power = None
    first = policy.evaluate()
    assert first.run and first.gpu_allowed and first.reason is None
    assert len(first.notes) == 4 and all("inactive" in note for note in first.notes)
    assert policy.evaluate().notes == ()


def test_sensors_are_polled_at_most_every_poll_seconds():
    clock, fake = Clock(), FakeSensors()
    policy = Policy(PolicyConfig(idle_minutes=1), fake.as_sensors(), clock.now, clock.monotonic, poll_seconds=5)
    for _ in range(10):
        policy.evaluate()
    assert fake.reads == 1
    clock.advance(5)
    policy.evaluate()
    assert fake.reads == 2


def test_a_failing_sensor_neither_crashes_nor_pauses():
    class Broken:
        def idle_seconds(self):
            raise OSError("boom")

    policy = Policy(PolicyConfig(idle_minutes=5), Sensors(idle=Broken()), poll_seconds=0)
    assert policy.evaluate().run


@pytest.mark.parametrize(
    "rules, message",
    [
        ({"idle_minutes": 0}, "idle_minutes must be positive"),
        ({"max_other_cpu_percent": 150}, "max_other_cpu_percent"),
        ({"battery_pause_below": 40, "battery_resume_above": 30}, "must be above battery_pause_below"),
        ({"battery_resume_above": 30}, "needs battery_pause_below"),
        ({"schedule": "someday"}, "not a day"),
    ],
)
def test_policy_config_validation(rules, message):
    with pytest.raises(ValueError, match=message):
        PolicyConfig(**rules)


def test_real_sensors_return_a_number_or_none():
    sensors = Sensors.system()
    idle, load = sensors.idle.idle_seconds(), sensors.cpu.other_percent()
    assert idle is None or idle >= 0
    assert load is None or 0 <= load <= 100
    gpu = sensors.gpu.other_gpu_processes()
    assert gpu is None or isinstance(gpu, list)
    battery = sensors.battery.battery()
    assert battery is None or 0 <= battery.percent <= 100
    assert Policy.from_config(PolicyConfig(idle_minutes=1, max_other_cpu_percent=100)).evaluate().run in (True, False)
