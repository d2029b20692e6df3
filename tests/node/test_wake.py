"""Sleep/wake: the node notices a suspend from its clocks and rejoins the swarm by itself."""

import threading
from types import SimpleNamespace

from hearth.tasks import load_task
from node.resources import Resources
from node.trainer import Trainer
from node.wake import SleepDetector


class FakeClocks:
    def __init__(self):
        self.monotonic, self.wall = 100.0, 1_000_000.0

    def run(self, seconds: float) -> None:
        self.monotonic += seconds
        self.wall += seconds

    def suspend(self, seconds: float) -> None:
        self.wall += seconds  # the monotonic clock stands still while the machine sleeps


def detector(clocks: FakeClocks) -> SleepDetector:
    return SleepDetector(monotonic=lambda: clocks.monotonic, wall=lambda: clocks.wall, threshold=30)


def test_a_suspend_is_noticed_once_and_for_about_its_length():
    clocks = FakeClocks()
    sleep = detector(clocks)
    clocks.run(600)
    assert sleep.slept() is None
    clocks.suspend(3600)
    clocks.run(5)
    assert sleep.slept() == 3600
    assert sleep.slept() is None  # the same sleep is not reported twice


def test_small_clock_corrections_are_not_a_suspend():
    clocks = FakeClocks()
    sleep = detector(clocks)
    clocks.suspend(10)  # e.g. NTP stepping the clock, or a long scheduler stall
    assert sleep.slept() is None
    clocks.wall -= 20
    assert sleep.slept() is None


def test_the_real_clocks_see_no_sleep_in_a_running_process():
    assert SleepDetector().slept() is None


class StubSwarm:
    """The parts of SwarmMember the trainer uses, counting leaves and rejoins."""

    def __init__(self, stop: threading.Event, steps_before_stop: int):
        self.manifest = SimpleNamespace(hyperparameters=SimpleNamespace(batch_size=32, learning_rate=2e-3), privacy=None)
        self.grad_averager = SimpleNamespace(rounds_started=0)
        self.rounds = self.grad_averager  # SwarmMember.rounds: the averager whose rounds close epochs
        self.joined, self.leaves, self.rejoins = True, 0, 0
        self.stop, self.steps_left = stop, steps_before_stop

    def build_optimizer(self, params, make_optimizer, make_scheduler=None):
        swarm, inner = self, make_optimizer(list(params))

        class Optimizer:
            local_epoch, state_loads = 0, 0

            def step(self, batch_size=None):
                inner.step()
                inner.zero_grad()
                swarm.steps_left -= 1
                if swarm.steps_left == 0:
                    swarm.stop.set()

        self.optimizer = Optimizer()
        return self.optimizer

    def catch_up(self) -> bool:
        return False

    def leave(self) -> None:
        self.joined, self.leaves = False, self.leaves + 1

    def rejoin(self) -> bool:
        self.joined, self.rejoins = True, self.rejoins + 1
        return True  # the swarm's newer state was downloaded


def test_after_a_suspend_the_trainer_leaves_and_rejoins_the_swarm():
    stop, clocks = threading.Event(), FakeClocks()
    swarm = StubSwarm(stop, steps_before_stop=6)
    resources = Resources("cpu", "cpu", 1, 32, 32, False, 2**30, 2**20)
    trainer = Trainer(load_task("spirals"), swarm, resources, "node-1", on_contribution=lambda contribution: None,
                      sleep_detector=detector(clocks))  # fmt: skip
    original_batch = trainer._train_one_batch

    def train_and_sleep_once(batch):
        original_batch(batch)
        if swarm.steps_left == 3:
            clocks.suspend(2 * 3600)  # the lid closes after the third batch

    trainer._train_one_batch = train_and_sleep_once
    trainer.run(stop)
    assert (swarm.leaves, swarm.rejoins) == (1, 1)
    assert trainer.stats.state_downloads == 1 and trainer.stats.state == "stopping"
